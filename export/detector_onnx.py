"""ONNX export of a YOLO detector's explanation, gradient included, and its runtimes.

``export.to_onnx(Explainer.for_detector(yolo), "explain.onnx", example)`` writes one graph that runs in
ONNX Runtime, OpenVINO and OpenCV's DNN (new engine) with no custom operator::

    images (N, 3, H, W) in [0, 1]
      -> backbone + neck (the head's input maps), without grad
      -> targets: targets="detections": each image's max_boxes best detections (greedy class-aware NMS
         unrolled max_boxes times, explainer.detection.anchor_targets.top_detections); targets="boxes":
         the graph's inputs ref_boxes (N, K, 4) and ref_labels (N, K) (label -1: padding)
      -> the head once (no grad); each target matched to its anchor (anchor_targets.matched_anchors)
      -> per target and level a (2r + 1)^2 crop of the map around that anchor (one-hot row / column
         products); the head on all crops at once; the box score of each crop's centre anchor, shifted
         back to its place; one backward: (N, K, C, h, w) per level, put back by the same products
      -> the method (the eager explainer's method.compute) per level -> combine_levels -> cams
    outputs: boxes (N, K, 4), scores (N, K), labels (N, K) (-1: no detection / unmatched), cams (N, K, H, W)

No exporter accepts ``autograd.grad``; as for classifiers (:mod:`export.onnx_graph`), the function is
traced first by ``make_fx`` with :func:`~export.decompositions.gradient_decompositions` (the gradient
becomes forward ops: transposed convolutions), then exported by ``torch.onnx.export(dynamo=True)``.
The batch (and K for targets="boxes") stays symbolic; the image size is the example's. A YOLO given as an
ONNX file is traced at fixed shapes instead (:class:`StaticOnnxYolo`: its head's shapes come from ``Shape``
nodes, folded to constants): the example's batch, K = max_boxes. The crops are the
eager explainer's (:func:`explainer.detection.anchor_split.crop_gradients`) with fixed shapes: the
anchors' positions are data, the crops' sizes are not.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor
from torch.export import Dim
from torch.fx.experimental.proxy_tensor import make_fx

from explainer.detection.anchor_targets import (
    box_scores,
    corners,
    label_onehot,
    matched_anchors,
    scores_at,
    top_detections,
)
from explainer.detection.scoring import combine_levels
from explainer.errors import ExportError
from explainer.tracing_lock import tracing
from export.decompositions import gradient_decompositions
from export.engine_patterns import engine_safe
from export.parts import check_destination

#: what the graph's targets are: its own top detections, or boxes and labels given as inputs
TARGET_MODES = ("detections", "boxes")
#: the key of the deploycam metadata in the ONNX file (the classifier graphs' key)
METADATA_KEY = "deploycam"
OUTPUTS = ["boxes", "scores", "labels", "cams"]


@dataclass(frozen=True)
class DetectorOnnxInfo:
    """What a detector ONNX graph computes (stored in the file under ``deploycam``).

    Attributes:
        method, layers: the method and the explained maps; detector: the model family.
        image_size: ``(H, W)`` the graph takes. targets: ``"detections"`` or ``"boxes"``.
        max_boxes: K of targets="detections" (None for "boxes": K is the inputs').
        batch, boxes: the fixed batch and (targets="boxes") the fixed K of a graph traced at fixed shapes
            (a YOLO given as an ONNX file); None where the graph takes any.
        confidence, nms_iou, score_threshold, iou_threshold: the detection and box-score settings.
        part: always ``"detector"``; format: ``"onnx"``.
    """

    method: str
    layers: tuple[str, ...]
    detector: str
    image_size: tuple[int, int]
    targets: str
    max_boxes: int | None
    confidence: float
    nms_iou: float
    score_threshold: float
    iou_threshold: float
    part: str = "detector"
    format: str = "onnx"
    #: the fixed batch of a graph traced at fixed shapes (a YOLO given as an ONNX file), None: any batch
    batch: int | None = None
    #: targets="boxes" at fixed shapes: K the ``ref_boxes`` input has (fewer are padded), None: any K
    boxes: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> DetectorOnnxInfo:
        data = json.loads(text)
        data["layers"], data["image_size"] = tuple(data["layers"]), tuple(data["image_size"])
        return cls(**data)


def explanation_function(explainer: Any, levels: list[int], targets: str, max_boxes: int, score_threshold: float,
                         iou_threshold: float = 0.5, parts: Any = None,
                         strides: list[float] | None = None) -> Callable[..., tuple[Tensor, ...]]:
    """The traced function: ``(images[, boxes, labels]) -> (boxes, scores, labels, *raw maps (N, K, h_l, w_l))``
    (module docstring); :class:`WithMaps` combines the raw maps outside the trace.

    Args:
        parts: what runs the backbone and the head (default ``explainer.parts``; a YOLO given as an ONNX file
            passes its :class:`StaticOnnxYolo`). strides: each level's stride in pixels (default: the head's).
    """
    parts, method = parts if parts is not None else explainer.parts, explainer.method
    if strides is None:
        strides = [float(s) for s in parts.head.stride] if method.needs_gradient else []  # read before tracing

    def explain(images: Tensor, ref_boxes: Tensor | None = None,
                ref_labels: Tensor | None = None) -> tuple[Tensor, ...]:
        with torch.no_grad():
            maps = parts.level_maps(images)
            decoded = parts.decoded(maps)
        picked = None
        if targets == "detections":
            picked = top_detections(decoded, max_boxes, parts.confidence, parts.iou, score_threshold)
            ref_boxes, ref_labels = picked[0], picked[2]
        assert ref_boxes is not None and ref_labels is not None
        with torch.no_grad():
            anchor, found = matched_anchors(decoded, ref_boxes, ref_labels, parts.confidence)
            _, box, probability, matched = scores_at(decoded, anchor, found, ref_boxes, ref_labels, iou_threshold)
        k = ref_boxes.shape[1]
        if method.needs_gradient:
            grads = crop_gradients(parts, maps, levels, strides, anchor, found, ref_boxes, ref_labels, iou_threshold)
            raws = [method.compute(maps[i], g) for i, g in zip(levels, grads)]
        else:
            raws = [method.compute(maps[i], maps[i].new_empty(0)).expand(-1, k, -1, -1) for i in levels]
        labels = torch.where(matched, ref_labels, torch.full_like(ref_labels, -1))
        if picked is not None:
            return (picked[0], picked[1], labels, *raws)
        return (box, probability, labels, *raws)

    if targets == "detections":
        def own_detections(images: Tensor) -> tuple[Tensor, ...]:
            return explain(images)

        return own_detections
    return explain


def crop_gradients(parts: Any, maps: list[Tensor], levels: list[int], strides: list[float], anchor: Tensor,
                   found: Tensor, ref_boxes: Tensor, ref_labels: Tensor, iou_threshold: float) -> list[Tensor]:
    """The graph's form of :func:`explainer.detection.anchor_split.crop_gradients`, with fixed shapes: for each
    target ``(n, k)`` and explained level, the ``(2r + 1)^2`` crop of the level's map around the target's
    matched anchor (``anchor`` ``(N, K)``; on the levels the anchor is not on, the crop's score is 0), cut and
    put back by products with one-hot row/column matrices (no gather, no scatter). One head run on all ``N K``
    crops of every explained level (the other levels 1 x 1); each level's centre anchor, shifted back to its
    place in the image, is scored with the box score; one backward of the sum gives every crop's gradient.
    Returns ``(N, K, C, h, w)`` per explained level."""
    n, k = anchor.shape
    sizes = [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]
    radius = int(parts.radius)
    starts = [0]
    for h, w in sizes:
        starts.append(starts[-1] + h * w)
    crop_sizes = [(min(2 * radius + 1, h), min(2 * radius + 1, w)) if i in levels else (1, 1)
                  for i, (h, w) in enumerate(sizes)]
    offsets = [0]
    for sh, sw in crop_sizes:
        offsets.append(offsets[-1] + sh * sw)
    dtype, device = maps[0].dtype, anchor.device
    with torch.no_grad():
        inputs = [m.new_zeros(n * k, m.shape[1], 1, 1) for m in maps]
        cut, picks, shifts, eligible = {}, {}, {}, {}
        for level in levels:
            (h, w), (sh, sw), start = sizes[level], crop_sizes[level], starts[level]
            eligible[level] = (found & (anchor >= start) & (anchor < start + h * w)).reshape(n * k)
            local = (anchor - start).clamp(0, h * w - 1)
            row, col = torch.div(local, w, rounding_mode="floor"), local % w
            r0, c0 = (row - radius).clamp(0, h - sh), (col - radius).clamp(0, w - sw)
            rows = (torch.arange(h, device=device) == (r0[..., None] + torch.arange(sh, device=device))[..., None]
                    ).to(dtype)  # (N, K, sh, h)
            cols = (torch.arange(w, device=device) == (c0[..., None] + torch.arange(sw, device=device))[..., None]
                    ).to(dtype)  # (N, K, sw, w)
            cut[level] = (rows, cols)
            crops = rows[:, :, None] @ maps[level][:, None] @ cols[:, :, None].transpose(-1, -2)  # (N, K, C, sh, sw)
            inputs[level] = crops.reshape(n * k, *crops.shape[2:])
            centre = offsets[level] + (row - r0) * sw + (col - c0)
            picks[level] = (torch.arange(offsets[-1], device=device) == centre[..., None]).to(dtype).reshape(
                n * k, offsets[-1], 1)
            shifts[level] = torch.stack([c0, r0], dim=-1).to(dtype).reshape(n * k, 2) * strides[level]
        classes = label_onehot(ref_labels.reshape(1, n * k), int(parts.num_classes), dtype)[0].T  # (N K, C)
    flat_boxes, flat_labels = ref_boxes.reshape(n * k, 4), ref_labels.reshape(n * k)

    def score(*crops: Tensor) -> Tensor:
        head_inputs = list(inputs)
        for level, crop in zip(levels, crops):
            head_inputs[level] = crop
        decoded = parts.decoded(head_inputs)  # (N K, 4 + classes, crop anchors)
        total = decoded.new_zeros(())
        for level in levels:
            outputs = torch.bmm(decoded, picks[level])[..., 0]  # (N K, 4 + classes): the centre anchor
            box = corners(torch.cat([outputs[:, 0:2] + shifts[level], outputs[:, 2:4]], dim=1))
            probability = (outputs[:, 4:] * classes).sum(dim=1)
            scores, _ = box_scores(box, probability, flat_boxes, flat_labels, eligible[level], iou_threshold)
            total = total + scores.sum()
        return total

    grads = torch.func.grad(score, argnums=tuple(range(len(levels))))(*[inputs[level] for level in levels])
    out = []
    for level, g in zip(levels, grads):
        rows, cols = cut[level]
        g = g.reshape(n, k, *g.shape[1:])
        out.append(rows[:, :, None].transpose(-1, -2) @ g @ cols[:, :, None])  # (N, K, C, h, w)
    return out


class StaticOnnxYolo:
    """A YOLO given as an ONNX file, ready to be traced at fixed shapes: its converted backbone, and its head
    specialised (:func:`~explainer.onnx_import.static_ops.fold_shapes`) once for the whole maps of ``batch``
    images and once for the ``batch * k`` crops of :func:`crop_gradients`. ultralytics' ``dynamic=True``
    files compute their reshapes and anchor grid from ``Shape``, which ``make_fx`` cannot follow; folded at
    the shapes the graph will have, they are constants. Everything else is the explainer's parts'.

    Args:
        parts: the explainer's :class:`~explainer.detection.yolo_onnx.OnnxYoloParts`.
        maps: the head's input maps of the example ``[(batch, C_l, h_l, w_l)]``; levels: the explained ones.
        k: targets per image.
    """

    def __init__(self, parts: Any, maps: list[Tensor], levels: list[int], k: int) -> None:
        from explainer.onnx_import.static_ops import fold_shapes

        self.radius, self.num_classes = parts.radius, parts.num_classes
        self.confidence, self.iou = parts.confidence, parts.iou
        self.level_maps = parts.level_maps  # the converted backbone: shape-free, traced as it is
        n = int(maps[0].shape[0])
        shapes = [tuple(m.shape) for m in maps]
        self.heads = {tuple(shapes): fold_shapes(parts.model.head, *maps)}
        if self.radius is not None:
            r = int(self.radius)
            crops = [m.new_zeros(n * k, m.shape[1], *((min(2 * r + 1, m.shape[2]), min(2 * r + 1, m.shape[3]))
                                                      if i in levels else (1, 1))) for i, m in enumerate(maps)]
            self.heads[tuple(tuple(c.shape) for c in crops)] = fold_shapes(parts.model.head, *crops)

    def decoded(self, maps: list[Tensor]) -> Tensor:
        """The head specialised to these maps' shapes, ``(N, 4 + classes, anchors)``."""
        head = self.heads.get(tuple(tuple(m.shape) for m in maps))
        if head is None:  # pragma: no cover - the graph only runs the shapes folded above
            raise ExportError(f"no head folded for maps {[tuple(m.shape) for m in maps]}")
        return head(*maps)


class _Finish(torch.nn.Module):
    """The traced explanation plus :func:`~explainer.detection.scoring.combine_levels` of its raw maps,
    outside the trace so that the resizing exports as ONNX ``Resize`` ops (traced, it decomposes into
    products with constant interpolation matrices)."""

    def __init__(self, traced: torch.nn.Module, height: int, width: int) -> None:
        super().__init__()
        self.traced, self.height, self.width = traced, height, width

    def finish(self, out: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        boxes, scores, labels, *raws = out
        h, w = self.height, self.width
        return boxes, scores, labels, combine_levels(list(raws), h, w, h, w, h, w)


class WithMaps(_Finish):
    """A targets="detections" explanation: ``images -> (boxes, scores, labels, cams)``."""

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.finish(self.traced(images))


class WithMapsOfBoxes(_Finish):
    """A targets="boxes" explanation: ``(images, ref_boxes, ref_labels) -> (boxes, scores, labels, cams)``."""

    def forward(self, images: Tensor, ref_boxes: Tensor, ref_labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.finish(self.traced(images, ref_boxes, ref_labels))


def deduplicated(model: Any) -> Any:
    """``model`` with initializers of identical type, shape and bytes merged into one (make_fx lifts a
    weight once per use: the forward and the transposed convolution of its gradient)."""
    first: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    keep = []
    for tensor in model.graph.initializer:
        key = (tensor.data_type, tuple(tensor.dims), tensor.raw_data) if tensor.raw_data else None
        if key is not None and key in first:
            rename[tensor.name] = first[key]
            continue
        if key is not None:
            first[key] = tensor.name
        keep.append(tensor)
    if not rename:
        return model
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    kept = {t.name for t in keep}
    inputs = [v for v in model.graph.input if v.name not in rename or v.name in kept]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    return model


def _free_size(taken: set[int], start: int = 2) -> int:
    """A size >= start that no fixed axis of the example has (make_fx gives equal sizes one symbol)."""
    return next(b for b in range(start, 200) if b not in taken)


def detector_to_onnx(explainer: Any, path: str | os.PathLike, example: Tensor, targets: str = "detections",
                     max_boxes: int = 10, score_threshold: float | None = None, opset: int | None = None,
                     ) -> DetectorOnnxInfo:
    """Export a YOLO :class:`~explainer.detection.DetectionExplainer` (PyTorch model or ONNX file) to an ONNX
    graph (see the module docstring); returns the metadata stored in it.

    The graph of a PyTorch model takes any batch (and any K of ``ref_boxes``). The graph of a YOLO given as an
    ONNX file is traced at fixed shapes (its head's shapes are read from ``Shape`` nodes, folded to constants
    there): the example's batch and, for targets="boxes", K = ``max_boxes``; :func:`export.load` runs other
    batches in chunks of it and pads fewer boxes.

    Args:
        explainer: a detector explainer of an ultralytics YOLO, with a gradient method or eigencam.
        path: the ``.onnx`` file to write (weights inside); its folder must exist.
        example: ``(N, 3, H, W)`` images in [0, 1] (letterboxed: sides multiples of 32); fixes H x W.
        targets: ``"detections"`` (the graph explains its own ``max_boxes`` best detections) or
            ``"boxes"`` (``ref_boxes`` ``(N, K, 4)`` and ``ref_labels`` ``(N, K)`` int64 are inputs, K any;
            at most ``max_boxes`` for an ONNX file's graph).
        score_threshold: the least score a detection needs to be explained (None: the confidence filter's).
    """
    import onnx

    from export.onnx_graph import SUPPORTED_OPSETS

    parts = explainer.parts
    if not hasattr(parts, "level_maps"):
        raise ExportError(f"no ONNX graph for {type(explainer.model).__name__} detector explanations yet: YOLO "
                          "detectors (PyTorch or ONNX files) export to ONNX, torchvision detectors to TorchScript "
                          "(export.to_torchscript)")
    from explainer.detection.yolo_onnx import OnnxYoloParts

    static = isinstance(parts, OnnxYoloParts)  # traced at the example's shapes (StaticOnnxYolo)
    if targets not in TARGET_MODES:
        raise ExportError(f"targets must be one of {', '.join(TARGET_MODES)}, got {targets!r}")
    if isinstance(max_boxes, bool) or not isinstance(max_boxes, int) or not 1 <= max_boxes <= 100:
        raise ExportError(f"max_boxes must be an int from 1 to 100, got {max_boxes!r}")
    if explainer.concat or not explainer.method.exportable:
        raise ExportError(f"{explainer.method.name if not explainer.method.exportable else 'target_layer=concat'} "
                          "has no ONNX detector graph: export a gradient method or eigencam on the head's inputs")
    if opset is not None and (isinstance(opset, bool) or opset not in SUPPORTED_OPSETS):
        raise ExportError(f"opset must be between {SUPPORTED_OPSETS[0]} and {SUPPORTED_OPSETS[-1]}, got {opset!r}")
    if explainer.method.needs_gradient and parts.radius is None:
        raise ExportError(f"the {type(parts.head).__name__} head holds modules whose locality deploycam does not "
                          "know (its receptive radius): no gradient graph; eigencam exports")
    threshold = parts.confidence if score_threshold is None else float(score_threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ExportError(f"score_threshold must be in [0, 1], got {score_threshold}")
    check_destination(path)
    explainer._check(example)
    prepared = parts.prepare(example[:1])
    levels = parts.selected(prepared, explainer.levels)
    h, w = example.shape[-2:]
    traced_parts, strides = None, None
    if static:  # fixed shapes: the example's batch, and K = max_boxes for targets="boxes"
        batch, k = int(example.shape[0]), max_boxes
        with torch.no_grad():
            traced_parts = StaticOnnxYolo(parts, parts.level_maps(example), levels, k)
        strides = [float(w) / float(m.shape[-1]) for m in prepared.maps]
        images = example.contiguous()
    else:  # a symbolic batch (and K): sizes no fixed axis has, which make_fx would otherwise merge
        taken = {int(s) for m in prepared.maps for s in m.shape[1:]} | {1, 3, 4, 16, *example.shape[1:]}
        batch = _free_size(taken)
        k = _free_size(taken | {batch})
        images = example[:1].expand(batch, -1, -1, -1).contiguous()
    inputs: tuple[Tensor, ...] = (images,)
    if targets == "boxes":
        corner = torch.rand(batch, k, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([w / 2, h / 2])
        boxes = torch.cat([corner, corner + torch.tensor([w / 4, h / 4])], dim=2).to(example)
        inputs = (images, boxes, torch.zeros(batch, k, dtype=torch.int64, device=example.device))
    fn = explanation_function(explainer, levels, targets, max_boxes, threshold, parts=traced_parts, strides=strides)
    info = DetectorOnnxInfo(explainer.method.name, tuple(parts.level_names(prepared, levels)),
                            type(explainer.model).__name__, (int(h), int(w)),
                            targets, max_boxes if targets == "detections" else None, parts.confidence, parts.iou,
                            threshold, 0.5, batch=batch if static else None,
                            boxes=k if static and targets == "boxes" else None)
    with tracing():
        try:
            traced = make_fx(fn, decomposition_table=gradient_decompositions(),
                             tracing_mode="real" if static else "symbolic", _allow_non_fake_inputs=True)(*inputs)
        except Exception as exc:  # noqa: BLE001 - tracing failures come in many types
            raise ExportError(f"could not trace the detector's explanation: {type(exc).__name__}: {exc}") from exc
        batch_dim = Dim("batch", min=1)
        dynamic: tuple[dict[int, Any], ...] | None = ({0: batch_dim},)
        names = ["images"]
        if targets == "boxes":
            boxes_dim = Dim("boxes", min=1)
            dynamic = ({0: batch_dim}, {0: batch_dim, 1: boxes_dim}, {0: batch_dim, 1: boxes_dim})
            names += ["ref_boxes", "ref_labels"]
        if static:
            dynamic = None
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r".*axis name: .* will not be used")
                wrapper = (WithMapsOfBoxes if targets == "boxes" else WithMaps)(traced, *info.image_size)
                program = torch.onnx.export(wrapper, inputs, dynamo=True, input_names=names,
                                            output_names=OUTPUTS,
                                            opset_version=opset, dynamic_shapes=dynamic, external_data=False,
                                            verbose=False)
        except Exception as exc:  # noqa: BLE001 - exporter errors vary; name the failing op
            op = re.search(r"op='([^']+)', overload='([^']+)'", str(exc))
            reason = f"the graph uses {op.group(1)}.{op.group(2)}, which has no ONNX translation" if op else \
                f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            raise ExportError(f"torch.onnx.export failed for the {info.detector} explanation: {reason}") from exc
    if program is None:  # pragma: no cover - the dynamo exporter always returns a program
        raise ExportError("torch.onnx.export returned no program")
    model = deduplicated(engine_safe(program.model_proto))
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info.to_json()
    onnx.checker.check_model(model)
    onnx.save_model(model, os.fspath(path))
    return info
