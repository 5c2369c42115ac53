"""An Ultralytics YOLO detector given only as an ONNX file, split at its ``Detect`` head's inputs.

What ``YOLO("yolov8n.pt").export(format="onnx")`` writes (YOLOv8 / YOLO11; fixed or dynamic shapes):
one image input ``(N, 3, H, W)`` in [0, 1] and one output ``(N, 4 + classes, anchors)`` -- ``cx, cy, w,
h`` in input pixels, then each class's probability -- the same decoded tensor the PyTorch route reads
(:meth:`~explainer.detection.yolo.YoloParts.decoded`). The file is normalised
(:mod:`explainer.onnx_import.normalise`), cut with :class:`onnx.utils.Extractor` at the head's input
tensors (the neck's P3/P4/P5 maps) into a backbone graph and a head graph, and both are converted to
PyTorch by onnx2torch: the backbone runs without grad, the head is differentiated from the maps on.
Everything after the head's output -- confidence filter, class-aware NMS, box scores, the anchor split
of K boxes, every method -- is :class:`~explainer.detection.yolo.YoloParts`' own code, so the two routes
give the same maps on the same weights.

The head's inputs are found from the exporter's node names (``/model.<i>/...``, one scope per
ultralytics layer; the head is the last scope): the image-dependent tensors that the last scope reads
from earlier ones. A file without those names needs them given (``levels=[tensor names]``).
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Sequence
from typing import Any

import onnx
import torch
from torch import Tensor, nn

from explainer.detection.parts import Prepared
from explainer.detection.yolo import CONFIDENCE, MAX_DETECTIONS, NMS_IOU, YoloParts
from explainer.errors import InputError, LayerNotFoundError, OnnxModelError, close_matches

#: ONNX sources :func:`is_onnx_source` recognises
ONNX_SUFFIX = ".onnx"
_SCOPE = re.compile(r"^/model\.(\d+)/")
#: ops of an ultralytics Detect head that keep each anchor a function of its own cell's window
_LOCAL_OPS = frozenset({"Conv", "Sigmoid", "Mul", "Add", "Sub", "Div", "Concat", "Split", "Reshape", "Transpose",
                        "Softmax", "Slice", "Shape", "Gather", "Unsqueeze", "Cast", "Identity", "Expand", "Range",
                        "ConstantOfShape", "Constant", "Squeeze", "Tile", "Equal", "Where", "Flatten"})


def is_onnx_source(source: Any) -> bool:
    """True for what :class:`OnnxYoloParts` reads: a ``.onnx`` path, an ``onnx.ModelProto`` or serialized bytes."""
    if isinstance(source, (onnx.ModelProto, bytes)):
        return True
    return isinstance(source, (str, os.PathLike)) and os.fspath(source).lower().endswith(ONNX_SUFFIX)


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The file's ``metadata_props`` (ultralytics writes ``task``, ``head``, ``stride``, ``names``, ``end2end``)."""
    return {p.key: p.value for p in model.metadata_props}


class OnnxYoloModule(nn.Module):
    """The converted halves: ``backbone(images (N, 3, H, W)) -> [P3, P4, P5]`` and ``head(*maps) -> (N, 4 +
    classes, anchors)``, both onnx2torch ``fx.GraphModule`` s."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: Tensor) -> Tensor:
        maps = self.backbone(images)
        return self.head(*(maps if isinstance(maps, (list, tuple)) else [maps]))


class OnnxYoloParts(YoloParts):
    """:class:`~explainer.detection.yolo.YoloParts` of an exported ONNX file (see the module docstring).

    Args:
        source: a ``.onnx`` path, an ``onnx.ModelProto`` or its serialized bytes.
        levels: the head's input tensors by name (None: found from the exporter's node names).
        confidence, iou, max_detections: the confidence filter and class-aware NMS (ultralytics' defaults).
    """

    def __init__(self, source: str | os.PathLike | onnx.ModelProto | bytes, levels: Sequence[str] | None = None,
                 confidence: float = CONFIDENCE, iou: float = NMS_IOU, max_detections: int = MAX_DETECTIONS) -> None:
        from explainer.onnx_import.convert import convert_graph, image_inputs, read_model
        from explainer.onnx_import.normalise import normalise

        for name, value in (("confidence", confidence), ("iou", iou)):
            if not 0.0 <= float(value) <= 1.0:
                raise InputError(f"{name} must be in [0, 1], got {value}")
        original = read_model(source)
        info = metadata(original)
        if info.get("end2end", "False").lower() == "true" or info.get("nms", "False").lower() == "true":
            raise OnnxModelError("this ONNX file is an end-to-end (NMS inside) export; deploycam explains the "
                                 "one-to-many output (N, 4 + classes, anchors): export with nms=False (YOLOv8 / YOLO11)")
        model = normalise(original)
        outputs = [o.name for o in model.graph.output]
        if len(outputs) != 1:
            raise OnnxModelError(f"a YOLO detector ONNX file has one output (N, 4 + classes, anchors); this one has "
                                 f"{len(outputs)} ({', '.join(outputs)}): segmentation/pose exports are not detectors")
        image = image_inputs(model)[0].name
        self.num_classes = _check_layout(model, outputs[0], info)
        self.level_tensors = list(levels) if levels is not None else head_inputs(model, image)
        backbone, head = _split(model, image, self.level_tensors, outputs)
        self.model: Any = OnnxYoloModule(convert_graph(backbone), convert_graph(head)).eval()
        self.head = self.model.head
        self.confidence, self.iou, self.max_detections = float(confidence), float(iou), int(max_detections)
        self.stride = int(info.get("stride", 32))
        self.info = info
        self.input_size = fixed_input_size(model)  # (H, W) where the file fixes it
        self.class_names = class_names(info)
        #: the head's receptive radius in cells: only for ultralytics' own files, whose head is known local
        self.radius = head_radius(head) if info.get("author") == "Ultralytics" and info.get("head") == "Detect" \
            else None

    #: a converted head may fix its map sizes (a fixed-shape export): K targets split through the whole head
    crops = False

    def target_names(self) -> list[str]:
        """The explainable maps: the head's input tensors (P3, P4, P5), by their names in the file."""
        return list(self.level_tensors)

    def prepare(self, images: Tensor) -> Prepared:
        """The backbone graph under no_grad; its outputs, the head's inputs, are the target maps."""
        h, w = images.shape[-2:]
        if h % self.stride or w % self.stride:
            raise InputError(f"YOLO input sides must be multiples of the model's stride {self.stride}; got {h}x{w}: "
                             "letterbox the picture first (explainer.detection.letterbox)")
        if self.input_size is not None and (h, w) != self.input_size:
            raise InputError(f"this ONNX file takes {self.input_size[0]}x{self.input_size[1]} inputs (exported "
                             f"without dynamic=True); got {h}x{w}: letterbox to that size")
        with torch.no_grad():
            maps = self.level_maps(images)
        return Prepared(images, images, [(h, w)] * len(images), maps, self.target_names(), [])

    def level_maps(self, images: Tensor) -> list[Tensor]:
        """The backbone graph's outputs, the head's input maps ``[(N, C_l, h_l, w_l)]``, in the caller's grad mode."""
        out = self.model.backbone(images)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    def decoded(self, maps: list[Tensor]) -> Tensor:
        """The head graph's output ``(N, 4 + classes, anchors)``."""
        return self.model.head(*maps)


def head_inputs(model: onnx.ModelProto, image: str) -> list[str]:
    """The tensors (image-dependent) that the last ``/model.<i>/`` scope (the ``Detect`` head) reads from
    earlier scopes, in graph order; :class:`OnnxModelError` when the file has no such names."""
    producer = {o: n for n in model.graph.node for o in n.output}
    from_image = {image}
    for node in model.graph.node:
        if any(i in from_image for i in node.input):
            from_image.update(o for o in node.output if o)
    scopes = [int(m.group(1)) if (m := _SCOPE.match(n.name)) else None for n in model.graph.node]
    known = [s for s in scopes if s is not None]
    if not known:
        raise OnnxModelError("cannot find the Detect head's inputs: the file's node names lack ultralytics' "
                             "'/model.<i>/' scopes; give the head's input tensors (levels=[P3, P4, P5 tensor names])")
    last = max(known)

    def scope(tensor: str) -> int | None:
        node = producer.get(tensor)
        m = _SCOPE.match(node.name) if node is not None else None
        return int(m.group(1)) if m else None

    found: list[str] = []
    for node, s in zip(model.graph.node, scopes):
        if s == last:
            found.extend(i for i in node.input if i in from_image and scope(i) != last and i not in found)
    if not found:
        raise OnnxModelError(f"the last scope /model.{last}/ reads no image-dependent tensor from earlier layers; "
                             "give the head's input tensors (levels=[...])")
    return found


def _split(model: onnx.ModelProto, image: str, levels: list[str], outputs: list[str]) -> tuple[onnx.ModelProto,
                                                                                              onnx.ModelProto]:
    """``(backbone: image -> levels, head: levels -> outputs)``; the head may read nothing else image-dependent."""
    produced = {o for n in model.graph.node for o in n.output}
    missing = [t for t in levels if t not in produced]
    if missing:
        names = [o for n in model.graph.node for o in n.output]
        hints = {t: close_matches(t, names) for t in missing}
        raise LayerNotFoundError("no tensor named " + "; ".join(
            f"{t!r}" + (f" (close: {', '.join(h)})" if h else "") for t, h in hints.items()) + " in the ONNX graph")
    producer = {o: n for n in model.graph.node for o in n.output}
    needed, stack, reads = set(), list(outputs), set()  # the head's nodes: outputs' ancestors, stopped at levels
    while stack:
        tensor = stack.pop()
        node = producer.get(tensor)
        if tensor in levels or node is None or id(node) in needed:
            reads.add(tensor)
            continue
        needed.add(id(node))
        stack.extend(i for i in node.input if i)
    from_image = {image}
    for node in model.graph.node:
        if any(i in from_image for i in node.input):
            from_image.update(o for o in node.output if o)
    unused = [t for t in levels if t not in reads]
    if unused:
        raise OnnxModelError(f"the detector's output does not read {', '.join(unused)} directly; give the head's "
                             "input tensors")
    skips = sorted(t for t in reads if t in from_image and t not in levels and producer.get(t) is not None
                   and id(producer[t]) not in needed)
    if skips:
        raise OnnxModelError(f"the head reads image-dependent tensors besides its inputs ({', '.join(skips[:5])}); "
                             "give the head's input tensors (levels=[...]) so that it reads nothing else")
    extractor = onnx.utils.Extractor(onnx.shape_inference.infer_shapes(model, strict_mode=False))
    return extractor.extract_model([image], levels), extractor.extract_model(levels, outputs)


def _check_layout(model: onnx.ModelProto, output: str, info: dict[str, str]) -> int | None:
    """The number of classes of a ``(N, 4 + classes, anchors)`` output (None where neither the shape nor the
    metadata says); :class:`OnnxModelError` for another layout."""
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in list(onnx.shape_inference.infer_shapes(model, strict_mode=False).graph.output)}
    shape = shapes.get(output, [])
    names = class_names(info)
    expected = "(N, 4 + classes, anchors): YOLOv8 / YOLO11's decoded boxes (cx, cy, w, h) and class probabilities"
    if len(shape) != 3:
        raise OnnxModelError(f"the detector's output {output!r} has rank {len(shape)}; expected {expected}")
    channels, anchors = shape[1], shape[2]
    if names is not None and channels is not None and channels != 4 + len(names):
        layout = ("(N, anchors, 5 + classes), YOLOv5's layout with objectness" if anchors == 5 + len(names)
                  else f"{channels} channels for {len(names)} classes")
        raise OnnxModelError(f"the detector's output {output!r} is {tuple(shape)}: {layout}; expected {expected}")
    if channels is not None and anchors is not None and channels > anchors:
        raise OnnxModelError(f"the detector's output {output!r} is {tuple(shape)} (anchors before channels?); "
                             f"expected {expected}")
    if names is not None:
        return len(names)
    return int(channels) - 4 if channels is not None else None  # None: a dynamic export without metadata


def head_radius(head: onnx.ModelProto) -> int | None:
    """The head graph's receptive radius in cells: the largest sum of ``dilation * (kernel - 1) / 2`` of the
    stride-1 convolutions along any path from an input; None when a node outside ultralytics' head ops
    (or a strided / even-kernel convolution) lies on such a path."""
    radius = {i.name: 0 for i in head.graph.input}
    initializers = {i.name for i in head.graph.initializer}
    for node in head.graph.node:
        reached = [radius[i] for i in node.input if i in radius]
        if not reached:
            continue
        if node.op_type not in _LOCAL_OPS:
            return None
        r = max(reached)
        if node.op_type == "Conv":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            kernel = list(attrs.get("kernel_shape", []))
            if not kernel and node.input[1] in initializers:
                weight = next(i for i in head.graph.initializer if i.name == node.input[1])
                kernel = list(weight.dims[2:])
            strides, dilations = list(attrs.get("strides", [1] * len(kernel))), list(
                attrs.get("dilations", [1] * len(kernel)))
            if not kernel or any(s != 1 for s in strides) or any(k % 2 == 0 for k in kernel):
                return None
            r += max(d * (k - 1) // 2 for d, k in zip(dilations, kernel))
        for o in node.output:
            if o:
                radius[o] = r
    return max((radius[o.name] for o in head.graph.output if o.name in radius), default=0)


def is_detector_file(path: str | os.PathLike) -> bool:
    """True for an ONNX file that says it is a detector (ultralytics' ``task: detect`` metadata) or whose one
    output is rank 3 (``(N, 4 + classes, anchors)``); read without its external weights."""
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not an ONNX file: the classifier route reports it
        return False
    task = metadata(model).get("task")
    if task is not None:
        return task == "detect"
    outputs = model.graph.output
    return len(outputs) == 1 and len(outputs[0].type.tensor_type.shape.dim) == 3


def class_names(info: dict[str, str]) -> list[str] | None:
    """The class names ultralytics writes into the file's metadata (``names``: ``{0: 'person', ...}``)."""
    if "names" not in info:
        return None
    try:
        names = ast.literal_eval(info["names"])
    except (ValueError, SyntaxError):
        return None
    return [str(names[i]) for i in sorted(names)] if isinstance(names, dict) else None


def fixed_input_size(model: Any) -> tuple[int, int] | None:
    """``(H, W)`` where the file fixes its input's spatial size, else None."""
    from explainer.onnx_import.convert import input_shape

    shape = input_shape(model)
    return (shape[2], shape[3]) if isinstance(shape[2], int) and isinstance(shape[3], int) else None
