"""A torchvision detector split at its feature maps without hooks: features without grad, the rest with.

``prepare(images)`` runs the detector's own transform and backbone under ``torch.no_grad()`` up to the
target maps: the FPN's output convolutions (one map per level, before the extra levels that pool or
convolve them) for FPN detectors, or the backbone's output maps for SSD. ``detect(prepared, maps)``
runs the *detector's own forward* on a shallow copy of it whose backbone is replaced by a module that
returns the given maps (plus the FPN's extra levels computed from them), so everything downstream --
RPN, RoI heads, anchors, box decoding, NMS, rescaling to the input size -- is torchvision's code and is
differentiated from the maps on. The model object is never changed: the copy has its own module table.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from explainer.detection import roi_split
from explainer.errors import LayerNotFoundError, ModelOutputError

DETECTOR_TYPES = ("FasterRCNN", "MaskRCNN", "KeypointRCNN", "RetinaNet", "FCOS", "SSD")


@dataclass
class Prepared:
    """One batch up to the target maps.

    Attributes:
        images: the input batch ``(N, 3, H, W)`` in [0, 1].
        canvas: ``(N, 3, Hc, Wc)`` after the detector's transform (normalised, resized, padded).
        image_sizes: each image's ``(h, w)`` inside the canvas.
        maps: the target maps, each ``(N, C, h_l, w_l)``, without grad.
        names: their names in the backbone's output (``"0"``, ``"1"``, ...).
        body: what the FPN's extra levels may read besides the maps (the body's outputs; RetinaNet's P6 reads C5).
    """

    images: Tensor
    canvas: Tensor
    image_sizes: list[tuple[int, int]]
    maps: list[Tensor]
    names: list[str]
    body: list[Tensor]

    def subset(self, rows: Tensor) -> Prepared:
        """The images ``rows`` (``(B,)`` indices, repeats allowed) of this batch, without re-running the backbone."""
        index = rows.tolist()
        return Prepared(self.images[rows], self.canvas[rows], [self.image_sizes[i] for i in index],
                        [m[rows] for m in self.maps], self.names, [b[rows] for b in self.body])


def is_detector(model: nn.Module) -> bool:
    """True for torchvision detectors this module knows how to split."""
    return any(t.__name__ in DETECTOR_TYPES for t in type(model).__mro__) and hasattr(model, "transform") \
        and hasattr(model, "backbone")


def layer_names(model: nn.Module) -> list[str]:
    """The target maps this detector offers: ``backbone.fpn.layer_blocks.<i>`` or ``backbone.<name>`` (SSD)."""
    fpn = getattr(model.backbone, "fpn", None)
    if fpn is not None:
        return [f"backbone.fpn.layer_blocks.{i}" for i in range(len(fpn.layer_blocks))]
    return []  # SSD: known only after a forward (the backbone's output names); see DetectorParts.layers


class _Maps(nn.Module):
    """Stands in for the backbone: returns the given maps (plus the FPN's extra levels) as its output dict."""

    def __init__(self, prepared: Prepared, maps: list[Tensor], extra: nn.Module | None) -> None:
        super().__init__()
        self.prepared = prepared
        self.maps = maps
        self.extra = extra
        self.out_channels = maps[0].shape[1]

    def forward(self, canvas: Tensor) -> OrderedDict[str, Tensor]:
        if canvas.shape != self.prepared.canvas.shape:
            raise RuntimeError("deploycam: the detector's transform gave another canvas than in prepare()")
        results, names = list(self.maps), list(self.prepared.names)
        if self.extra is not None:
            results, names = self.extra(results, list(self.prepared.body), names)
        return OrderedDict(zip(names, results))


class DetectorParts:
    """Backbone and rest of a torchvision detector (see the module docstring)."""

    def __init__(self, model: nn.Module, levels: list[int] | None = None) -> None:
        if not is_detector(model):
            raise ModelOutputError(f"{type(model).__name__} is not a torchvision detector this explainer knows "
                                   f"({', '.join(DETECTOR_TYPES)}); explain classifiers with Explainer(model, layer)")
        self.model = model
        self.fpn = getattr(model.backbone, "fpn", None)
        self.levels = levels  # None: every level
        #: K boxes' gradients from the box head re-run on their own RoIs (explainer.detection.roi_split)
        self.roi_split = roi_split.supports(model)

    def target_names(self) -> list[str] | None:
        """The selectable target maps (``backbone.fpn.layer_blocks.<i>``); None without an FPN (SSD: ``"backbone"``)."""
        if self.fpn is None:
            return None
        return [f"backbone.fpn.layer_blocks.{i}" for i in range(len(self.fpn.layer_blocks))]

    def prepare(self, images: Tensor) -> Prepared:
        """Transform and backbone under no_grad, up to the target maps."""
        model: Any = self.model  # torchvision's detectors: transform, backbone (.body, .fpn)
        with torch.no_grad():
            image_list, _ = model.transform(list(images))
            canvas = image_list.tensors
            if self.fpn is not None:
                body = model.backbone.body(canvas)
                fpn = _shallow(self.fpn, extra_blocks=None)
                out = fpn(body)
                names, maps, body_maps = list(out.keys()), list(out.values()), list(body.values())
            else:
                out = model.backbone(canvas)
                if isinstance(out, Tensor):
                    out = OrderedDict([("0", out)])
                names, maps, body_maps = list(out.keys()), list(out.values()), []
        return Prepared(images, canvas, [tuple(s) for s in image_list.image_sizes], maps, names, body_maps)

    def detect(self, prepared: Prepared, maps: list[Tensor]) -> list[dict[str, Tensor]]:
        """The detector's output for ``prepared``'s images with ``maps`` as its target maps (differentiable)."""
        extra = self.fpn.extra_blocks if self.fpn is not None else None
        clone = _shallow(self.model, backbone=_Maps(prepared, maps, extra))
        return clone(list(prepared.images))

    def splits(self, k: int) -> bool:
        """Whether K targets' gradients come from :meth:`level_gradients` (after :meth:`split_forward`)."""
        return self.roi_split

    def split_forward(self, prepared: Prepared, maps: list[Tensor]) -> tuple[list[dict[str, Tensor]], Any] | None:
        """R-CNN detectors: the detections from ``maps`` with the heads run without grad, differentiable from
        the box head's outputs (:func:`~explainer.detection.roi_split.rcnn_forward`), and the state
        :meth:`level_gradients` reads; None for the other detectors."""
        if not self.roi_split:
            return None
        extra = self.fpn.extra_blocks if self.fpn is not None else None
        features = _Maps(prepared, [m.detach() for m in maps], extra)(prepared.canvas)
        originals = [(int(i.shape[-2]), int(i.shape[-1])) for i in prepared.images]
        return roi_split.rcnn_forward(self.model, prepared.canvas, prepared.image_sizes, originals, features)

    def level_gradients(self, scores: Tensor, state: Any, leaves: list[Tensor], levels: list[int],
                        prepared: Prepared) -> list[Tensor] | None:
        """K targets' gradients ``(N, K, C, h, w)`` per explained level from :meth:`split_forward`'s state
        (:func:`~explainer.detection.roi_split.rcnn_gradients`)."""
        if not isinstance(state, roi_split.RoiState):
            return None
        return roi_split.rcnn_gradients(self.model, scores, state, [prepared.names[i] for i in levels],
                                        prepared.image_sizes)

    def concatenated(self, prepared: Prepared) -> Tensor:
        """Every backbone output level (the FPN's extra ones included), ``|x|`` resized bilinearly to the
        last (coarsest) level's size and concatenated on channels: ``(N, sum C_l, h, w)``, without grad.
        This is pytorch-grad-cam's ``fasterrcnn_reshape_transform`` of ``model.backbone``'s output."""
        with torch.no_grad():
            maps, names = list(prepared.maps), list(prepared.names)
            if self.fpn is not None and self.fpn.extra_blocks is not None:
                maps, names = self.fpn.extra_blocks(maps, list(prepared.body), names)
            return concatenated_levels(maps)

    def level_names(self, prepared: Prepared, levels: list[int]) -> list[str]:
        """Names of the explained maps: ``backbone.fpn.layer_blocks.<i>`` (FPN) or ``backbone.<output>`` (SSD)."""
        if self.fpn is not None:
            return [f"backbone.fpn.layer_blocks.{i}" for i in levels]
        return [f"backbone.{prepared.names[i]}" for i in levels]

    def selected(self, prepared: Prepared, levels: list[int] | None) -> list[int]:
        """Indices of the maps to explain (every level when ``levels`` is None)."""
        return selected_levels(prepared, levels)


def concatenated_levels(maps: list[Tensor]) -> Tensor:
    """``|x|`` of each ``(N, C_l, h_l, w_l)`` map resized bilinearly to the last (coarsest) one's size and
    concatenated on channels: ``(N, sum C_l, h, w)`` (pytorch-grad-cam's ``fasterrcnn_reshape_transform``)."""
    size = maps[-1].shape[-2:]
    return torch.cat([F.interpolate(m.abs(), size=size, mode="bilinear", align_corners=False) for m in maps], dim=1)


def selected_levels(prepared: Prepared, levels: list[int] | None) -> list[int]:
    """Indices of ``prepared``'s maps to explain (every level when ``levels`` is None), checked."""
    count = len(prepared.maps)
    chosen = list(range(count)) if levels is None else levels
    bad = [i for i in chosen if not 0 <= i < count]
    if bad:
        raise LayerNotFoundError(f"the detector has {count} feature levels; level(s) {bad} do not exist")
    return chosen


def detector_parts(model: Any) -> Any:
    """The split of a detector this package knows: torchvision's (:class:`DetectorParts`), an ultralytics
    YOLO (:class:`~explainer.detection.yolo.YoloParts`; an ``ultralytics.YOLO`` object is unwrapped) or its
    ONNX export (a ``.onnx`` path, ModelProto or bytes: :class:`~explainer.detection.yolo_onnx.OnnxYoloParts`);
    otherwise :class:`ModelOutputError` naming the supported families."""
    from explainer.detection.yolo import YoloParts, is_yolo, unwrap
    from explainer.detection.yolo_onnx import OnnxYoloParts, is_onnx_source

    if is_onnx_source(model):
        return OnnxYoloParts(model)
    model = unwrap(model)
    if isinstance(model, nn.Module) and is_yolo(model):
        return YoloParts(model)
    if isinstance(model, nn.Module) and is_detector(model):
        return DetectorParts(model)
    raise ModelOutputError(f"{type(model).__name__} is not a detector this explainer knows: torchvision's "
                           f"{', '.join(DETECTOR_TYPES)}, or an ultralytics YOLO DetectionModel (YOLOv8, YOLO11: "
                           "YOLO('yolov8n.yaml').model) or its ONNX export (a .onnx path); explain classifiers with Explainer(model, layer)")


def _shallow(module: nn.Module, **replace: nn.Module | None) -> nn.Module:
    """A shallow copy of ``module`` with some child modules replaced; ``module`` itself is untouched
    (the copy gets its own module table, sharing every other child and parameter)."""
    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    for name, child in replace.items():
        clone._modules[name] = child
    return clone
