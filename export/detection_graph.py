"""TorchScript export of a detector explanation: ``(images, labels, boxes) -> (detections, cams)``.

The graph is the eager :class:`~explainer.detection.DetectionExplainer`'s step sequence as scriptable
code around the detector's own (scriptable) torchvision modules::

    images (N, 3, H, W) in [0, 1]
      -> detector.transform, backbone body, FPN output convolutions   (without grad)
      -> the explained levels as leaves; the FPN's extra levels recomputed from them
      -> the detector's heads, box decoding, NMS, rescaling          (with grad)
      -> box_score per image (explainer.detection.scoring)  -> torch.autograd.grad to the leaves
      -> the method on each level -> combine_levels              -> cams (N, H, W)

The eager explainer runs the detector's own ``forward`` on a copy whose backbone returns the maps; a
scripted graph cannot swap modules per call, so the few lines of torchvision's ``forward`` after the
backbone (R-CNN: RPN, RoI heads, postprocess; RetinaNet/FCOS: head, anchors, per-level split,
postprocess; SSD: head, anchors, postprocess) are restated here, one small class per family, and
tested against the eager explainer. The score and the map are the same functions the eager path
calls. Grad mode must be on at entry (see :mod:`export.torchscript`). (No ``from __future__ import
annotations``: TorchScript reads these annotations as objects.)
"""

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList

from explainer.detection.explainer import DetectionExplainer
from explainer.detection.parts import _shallow
from explainer.detection.scoring import box_score, combine_levels
from explainer.errors import ExportError
from explainer.tracing_lock import tracing
from export.parts import check_destination, method_module

#: what ``deploycam.json`` says of a detector graph (``export.load`` refuses it with this hint)
DETECTOR_PART = "detector"


class _FpnMaps(nn.Module):
    """``canvas -> (maps, names, body)``: the backbone body and the FPN up to its output convolutions."""

    def __init__(self, backbone: Any) -> None:
        super().__init__()
        self.body = backbone.body
        self.fpn = _shallow(backbone.fpn, extra_blocks=None)

    def forward(self, canvas: Tensor) -> tuple[list[Tensor], list[str], list[Tensor]]:
        body = self.body(canvas)
        out = self.fpn(body)
        return list(out.values()), list(out.keys()), list(body.values())


class _BackboneMaps(nn.Module):
    """``canvas -> (maps, names, [])``: a backbone without FPN (SSD) returning a dict of maps."""

    def __init__(self, backbone: Any) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, canvas: Tensor) -> tuple[list[Tensor], list[str], list[Tensor]]:
        out = self.backbone(canvas)
        return list(out.values()), list(out.keys()), []


class _ExtraLevels(nn.Module):
    """The FPN's extra levels (max-pooled P6, or RetinaNet's P6/P7) recomputed from the given maps."""

    def __init__(self, blocks: nn.Module) -> None:
        super().__init__()
        self.blocks = blocks

    def forward(self, maps: list[Tensor], body: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        return self.blocks(list(maps), list(body), list(names))  # copies: the blocks append to their lists


class _NoExtraLevels(nn.Module):
    def forward(self, maps: list[Tensor], body: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        return maps, names


class DetectionGraph(nn.Module):
    """``forward(images, labels=None, boxes=None) -> (detections, cams)``, scriptable.

    ``images``: ``(N, 3, H, W)`` floats in [0, 1]. ``labels`` ``(N, B)`` int64 and ``boxes``
    ``(N, B, 4)`` (x1, y1, x2, y2 in input pixels): each image's reference boxes, scored as
    :class:`explainer.DetectionTarget` does (label -1 pads an image with fewer boxes); None explains
    each image's top detection. ``detections``: per image ``{"boxes", "labels", "scores"}`` (plus the
    detector's extra outputs, e.g. masks); ``cams``: ``(N, H, W)`` in [0, 1].
    """

    needs_gradient: bool
    same_label: bool
    iou_threshold: float
    levels: list[int]

    def __init__(self, model: Any, levels: list[int], method: nn.Module, needs_gradient: bool,
                 iou_threshold: float = 0.5, same_label: bool = True) -> None:
        super().__init__()
        self.transform = model.transform
        fpn = getattr(model.backbone, "fpn", None)
        self.maps = _FpnMaps(model.backbone) if fpn is not None else _BackboneMaps(model.backbone)
        blocks = fpn.extra_blocks if fpn is not None else None
        self.extra = _ExtraLevels(blocks) if blocks is not None else _NoExtraLevels()
        self.method = method
        self.levels = list(levels)
        self.needs_gradient = needs_gradient
        self.iou_threshold = float(iou_threshold)
        self.same_label = same_label

    def detect(self, image_sizes: list[tuple[int, int]], canvas: Tensor, features: list[Tensor], names: list[str],
               original_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        raise NotImplementedError  # one subclass per detector family

    def forward(self, images: Tensor, labels: Tensor | None = None,
                boxes: Tensor | None = None) -> tuple[list[dict[str, Tensor]], Tensor]:
        if self.needs_gradient and not torch.is_grad_enabled():
            raise RuntimeError("deploycam: this graph computes a gradient; call it with grad mode enabled "
                               "(not under torch.no_grad()/torch::NoGradGuard, nor inference mode)")
        if images.dim() != 4 or images.size(1) != 3:
            raise RuntimeError("deploycam: images must be (N, 3, H, W) floats in [0, 1]")
        n, height, width = images.size(0), images.size(2), images.size(3)
        original_sizes: list[tuple[int, int]] = [(height, width) for _ in range(n)]
        with torch.no_grad():
            image_list, _ = self.transform(images.unbind(0), None)
            canvas = image_list.tensors
            maps, names, body = self.maps(canvas)
        sizes = image_list.image_sizes
        leaves: list[Tensor] = []
        features = list(maps)
        for i in self.levels:
            leaf = maps[i].detach().requires_grad_(self.needs_gradient)
            leaves.append(leaf)
            features[i] = leaf.clone()  # the head may work in place
        if self.needs_gradient and (labels is None or boxes is None):
            with torch.no_grad():
                extended, all_names = self.extra(maps, body, names)
                found = self.detect(sizes, canvas, extended, all_names, original_sizes)
            labels, boxes = _top_detections(found)
        if self.needs_gradient:
            assert labels is not None and boxes is not None
            if labels.dim() != 2 or boxes.dim() != 3 or boxes.size(2) != 4 or labels.size(0) != n \
                    or boxes.size(0) != n or boxes.size(1) != labels.size(1):
                raise RuntimeError("deploycam: labels must be (N, B) int64 and boxes (N, B, 4) for N images")
            extended, all_names = self.extra(features, body, names)
            detections = self.detect(sizes, canvas, extended, all_names, original_sizes)
            scores: list[Tensor] = []
            for i, d in enumerate(detections):
                scores.append(box_score(d["boxes"], d["labels"], d["scores"], labels[i], boxes[i],
                                        self.iou_threshold, self.same_label))
            total = torch.stack(scores).sum()
            grads: list[Tensor] = []
            if total.requires_grad:
                found_grads = torch.autograd.grad([total], leaves, allow_unused=True)
                for g, leaf in zip(found_grads, leaves):
                    grads.append(torch.zeros_like(leaf) if g is None else g)
            else:
                grads = [torch.zeros_like(leaf) for leaf in leaves]
        else:
            with torch.no_grad():
                extended, all_names = self.extra(features, body, names)
                detections = self.detect(sizes, canvas, extended, all_names, original_sizes)
            grads = [leaf.new_empty(0) for leaf in leaves]
        raws: list[Tensor] = []
        with torch.no_grad():
            for leaf, g in zip(leaves, grads):
                raw = self.method(leaf.detach(), g.unsqueeze(1) if self.needs_gradient else g)
                if not bool(torch.isfinite(raw).all()):
                    raise RuntimeError("deploycam: the method produced NaN/inf values on the detector's feature maps")
                raws.append(raw)
            inner = sizes[0]
            cams = combine_levels(raws, height, width, canvas.size(2), canvas.size(3), inner[0], inner[1])
        out: list[dict[str, Tensor]] = []
        for d in detections:
            out.append({key: value.detach() for key, value in d.items()})
        return out, cams[:, 0].detach()


def _top_detections(found: list[dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
    """Each image's best detection as ``(labels (N, 1), boxes (N, 1, 4))``."""
    labels: list[Tensor] = []
    boxes: list[Tensor] = []
    for d in found:
        if d["scores"].numel() == 0:
            raise RuntimeError("deploycam: an image has no detection to explain; pass labels and boxes")
        best = int(d["scores"].argmax())
        labels.append(d["labels"][best].reshape(1))
        boxes.append(d["boxes"][best].reshape(1, 4))
    return torch.stack(labels), torch.stack(boxes)


class RcnnGraph(DetectionGraph):
    """Faster / Mask / Keypoint R-CNN: RPN, RoI heads, rescaling (``GeneralizedRCNN.forward``)."""

    def __init__(self, model: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(model, *args, **kwargs)
        self.rpn = model.rpn
        self.roi_heads = model.roi_heads

    def detect(self, image_sizes: list[tuple[int, int]], canvas: Tensor, features: list[Tensor], names: list[str],
               original_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        table: dict[str, Tensor] = {}
        for name, f in zip(names, features):
            table[name] = f
        images = _image_list(canvas, image_sizes)
        proposals, _ = self.rpn(images, table, None)
        detections, _ = self.roi_heads(table, proposals, image_sizes, None)
        return self.transform.postprocess(detections, image_sizes, original_sizes)


class SsdGraph(DetectionGraph):
    """SSD and SSDlite: head, anchors, box decoding (``SSD.forward``); the base of :class:`DenseGraph`."""

    def __init__(self, model: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(model, *args, **kwargs)
        self.detector = model

    def detect(self, image_sizes: list[tuple[int, int]], canvas: Tensor, features: list[Tensor], names: list[str],
               original_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        images = _image_list(canvas, image_sizes)
        head_outputs = self.detector.head(features)
        anchors = self.detector.anchor_generator(images, features)
        detections = self.decode(head_outputs, anchors, features, image_sizes)
        return self.transform.postprocess(detections, image_sizes, original_sizes)

    def decode(self, head_outputs: dict[str, Tensor], anchors: list[Tensor], features: list[Tensor],
               image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        return self.detector.postprocess_detections(head_outputs, anchors, image_sizes)


class DenseGraph(SsdGraph):
    """RetinaNet and FCOS: as SSD, the head's outputs and anchors split per level first (``RetinaNet.forward``)."""

    def decode(self, head_outputs: dict[str, Tensor], anchors: list[Tensor], features: list[Tensor],
               image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        per_level = [x.size(2) * x.size(3) for x in features]
        total = 0
        for v in per_level:
            total += v
        a = head_outputs["cls_logits"].size(1) // total
        per_level = [hw * a for hw in per_level]
        split_outputs: dict[str, list[Tensor]] = {}
        for key in head_outputs:
            split_outputs[key] = list(head_outputs[key].split(per_level, dim=1))
        split_anchors = [list(anchor.split(per_level)) for anchor in anchors]
        return self.detector.postprocess_detections(split_outputs, split_anchors, image_sizes)


def _image_list(canvas: Tensor, image_sizes: list[tuple[int, int]]) -> ImageList:
    return ImageList(canvas, image_sizes)


@dataclass(frozen=True)
class DetectorGraphInfo:
    """Metadata of a detector graph (``deploycam.json`` in the file).

    Attributes:
        method: the CAM method; layers: the explained maps; image_size: ``(H, W)`` of the example.
        detector: the detector's class name; part: always ``"detector"``; format: ``"torchscript"``.
    """

    method: str
    layers: tuple[str, ...]
    image_size: tuple[int, int]
    detector: str
    part: str = DETECTOR_PART
    format: str = "torchscript"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "DetectorGraphInfo":
        try:
            data = json.loads(text)
            return cls(str(data["method"]), tuple(data["layers"]), (int(data["image_size"][0]), int(data["image_size"][1])),
                       str(data["detector"]))
        except (ValueError, TypeError, KeyError) as exc:
            raise ExportError(f"the file's deploycam metadata is damaged ({type(exc).__name__}: {exc}); "
                              "export the graph again") from exc


def build_detection_graph(explainer: DetectionExplainer, example: Tensor) -> tuple[DetectionGraph, DetectorGraphInfo]:
    """The (not yet scripted) graph of ``explainer``'s detector, levels and method, and its metadata.
    ``example``: ``(N, 3, H, W)`` images, run once to find the levels (SSD's maps are known only then)."""
    model = explainer.model
    names = [t.__name__ for t in type(model).__mro__]
    if "GeneralizedRCNN" in names:
        cls: type[DetectionGraph] = RcnnGraph
    elif "RetinaNet" in names or "FCOS" in names:
        cls = DenseGraph
    elif "SSD" in names:
        cls = SsdGraph
    else:
        raise ExportError(f"no TorchScript graph for {type(model).__name__} detectors: YOLO explanations export "
                          "to ONNX (export.to_onnx), which ONNX Runtime, OpenVINO and OpenCV run")
    if explainer.concat:
        raise ExportError("target_layer='concat' (levels resized and concatenated) has no TorchScript graph yet; "
                          "export 'fpn' or a list of levels")
    explainer._check(example)
    prepared = explainer.parts.prepare(example)
    levels = explainer.parts.selected(prepared, explainer.levels)
    method = explainer.method
    graph = cls(model, levels, method_module(method), method.needs_gradient)
    object.__setattr__(graph, "training", False)  # the wrapper only; shared submodules keep their flags
    info = DetectorGraphInfo(method.name, tuple(explainer.parts.level_names(prepared, levels)),
                             (int(example.shape[-2]), int(example.shape[-1])), type(model).__name__)
    return graph, info


def detector_to_torchscript(explainer: DetectionExplainer, path: str | os.PathLike, example: Tensor) -> DetectorGraphInfo:
    """Script ``explainer``'s detector explanation and save it to ``path`` (see :class:`DetectionGraph`)."""
    from export.torchscript import METADATA_FILE, script_module

    check_destination(path)
    with tracing():
        graph, info = build_detection_graph(explainer, example)
    try:
        scripted = script_module(graph)
    except Exception as exc:  # noqa: BLE001 - TorchScript raises many frontend errors
        raise ExportError(f"torch.jit.script could not compile the {info.detector} explanation: "
                          f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}") from exc
    torch.jit.save(scripted, os.fspath(path), _extra_files={METADATA_FILE: info.to_json()})
    return info


def is_detector_graph(metadata: str) -> bool:
    """True when a file's ``deploycam.json`` text describes a detector graph."""
    try:
        return json.loads(metadata).get("part") == DETECTOR_PART
    except (ValueError, AttributeError):
        return False


def load_detector(path: str | os.PathLike, device: str = "cpu") -> "TorchScriptDetectionExplainer":
    """Open a detector explanation saved by :func:`export.to_torchscript`."""
    from export.graph_files import check_graph_path
    from export.torchscript import METADATA_FILE

    check_graph_path(os.fspath(path), (".pt", ".ts", ".pth"))
    extra = {METADATA_FILE: ""}
    try:
        module = torch.jit.load(os.fspath(path), map_location=device, _extra_files=extra)
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError with C++ text
        raise ExportError(f"{path} is not a TorchScript file torch.jit.load can read: "
                          f"{str(exc).strip().splitlines()[0]}") from exc
    if not is_detector_graph(extra[METADATA_FILE]):
        raise ExportError(f"{path} is not a detector explanation exported by deploycam; open classifier graphs "
                          "with export.load")
    return TorchScriptDetectionExplainer(module, DetectorGraphInfo.from_json(extra[METADATA_FILE]), device)


class TorchScriptDetectionExplainer:
    """A saved detector explanation run by ``torch.jit.load`` (what :func:`export.load` returns for one).

    ``rt(images, labels=None, boxes=None) -> (detections, cams)``: see :class:`DetectionGraph`.
    """

    def __init__(self, module: torch.jit.ScriptModule, info: DetectorGraphInfo, device: str = "cpu") -> None:
        self.module = module
        self.info = info
        self.device = torch.device(device)
        self.backend = f"torchscript/{self.device}"

    def __call__(self, images: Tensor, labels: Tensor | None = None,
                 boxes: Tensor | None = None) -> tuple[list[dict[str, Tensor]], Tensor]:
        """Explain ``images`` ``(N, 3, H, W)`` in [0, 1] for reference ``labels`` ``(N, B)`` and ``boxes``
        ``(N, B, 4)`` (None: each image's top detection). Returns the detections and ``(N, H, W)`` maps."""
        from explainer.checks import check_grad_mode, check_input
        from explainer.errors import InputError

        check_grad_mode()
        check_input(images, self.device, torch.float32, 3)
        if (labels is None) != (boxes is None):
            raise InputError("give both labels (N, B) and boxes (N, B, 4), or neither (each image's top detection)")
        if labels is not None and boxes is not None:
            labels = torch.as_tensor(labels, dtype=torch.int64, device=self.device)
            boxes = torch.as_tensor(boxes, dtype=torch.float32, device=self.device)
            n = len(images)
            if labels.ndim != 2 or labels.shape[0] != n or boxes.shape != (n, labels.shape[1], 4):
                raise InputError(f"labels must be (N, B) and boxes (N, B, 4) for N={n} images; got "
                                 f"{tuple(labels.shape)} and {tuple(boxes.shape)}")
        with torch.enable_grad():  # the graph computes its gradient (see export.torchscript)
            detections, cams = self.module(images, labels, boxes)
        return detections, cams
