"""What an exported graph is made of: the explainer's split parts, the method, the metadata."""


import json
import operator
import os
from dataclasses import asdict, dataclass, fields, replace
from typing import Tuple

import torch
from torch import Tensor, fx, nn

from explainer.core import Explainer
from explainer.errors import ExportError, InputError
from explainer.methods import CamMethod
from explainer.pipeline import unpack_backbone

PARTS = ("full", "head")


@dataclass(frozen=True)
class GraphInfo:
    """Metadata saved inside every exported file (ONNX metadata_props / TorchScript extra file).

    Attributes:
        part: ``"full"`` (image -> logits, cam (N, H, W)) or ``"head"`` (activations -> logits, cam (N, h, w)).
        method, layer: what the map is.
        input_shape: ``(C, H, W)`` of the graph's first input (the image, or the activations).
        image_size: ``(H, W)`` of the images the example was made with.
        num_classes: number of logits.
        format: ``"onnx"`` or ``"torchscript"``.
        input_layout: ``"nchw"``, or ``"nhwc"`` for graphs of ONNX models that take ``(N, H, W, C)``
            images (``input_shape`` is then ``(H, W, C)``).
    """

    part: str
    method: str
    layer: str
    input_shape: tuple[int, ...]
    image_size: tuple[int, ...]
    num_classes: int
    format: str
    input_layout: str = "nchw"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "GraphInfo":
        """Parse the metadata; raises :class:`ExportError` for damaged or foreign metadata."""
        try:
            data = json.loads(text)
            info = cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data or f.name not in _OPTIONAL})
            info = replace(info, input_shape=tuple(int(d) for d in info.input_shape),
                           image_size=tuple(int(d) for d in info.image_size), num_classes=int(info.num_classes))
        except (ValueError, TypeError, KeyError) as exc:
            raise ExportError(f"the file's deploycam metadata is damaged ({type(exc).__name__}: {exc}); "
                              "export the graph again") from exc
        if info.input_layout not in ("nchw", "nhwc"):
            raise ExportError(f"the file's deploycam metadata is damaged (input_layout {info.input_layout!r}); "
                              "export the graph again")
        if info.part not in PARTS or len(info.input_shape) != 3 or len(info.image_size) != 2 or info.num_classes < 1:
            raise ExportError(f"the file's deploycam metadata is damaged ({text[:200]!r}); export the graph again")
        return info


#: GraphInfo fields that files written before they existed lack
_OPTIONAL = ("input_layout",)


@dataclass(frozen=True)
class ExportParts:
    """The pieces an exporter needs, checked.

    Attributes:
        backbone: ``x -> (activations, *skips)`` module.
        head: ``(activations, *skips) -> logits`` module.
        method: the CAM method.
        activations: example activations ``(N, C, h, w)`` from ``example_input``.
        skips: example skip tensors.
        info: metadata for the file (format filled in by the exporter).
    """

    backbone: nn.Module
    head: nn.Module
    method: CamMethod
    activations: Tensor
    skips: tuple[Tensor, ...]
    info: GraphInfo


def export_parts(explainer: Explainer, example_input: Tensor, part: str, fmt: str) -> ExportParts:
    """Check that ``explainer`` can be exported as ``part`` and run the example ``(N, C, H, W)`` (already
    through :meth:`Explainer.to_nchw`) through it once."""
    if part not in PARTS:
        raise ExportError(f"part must be one of {PARTS}, got {part!r}")
    if not isinstance(explainer, Explainer):
        layers = getattr(explainer, "layers", None)
        raise ExportError(f"cannot export a {type(explainer).__name__}" + (
            f" (layers {', '.join(layers)}): export one Explainer per layer" if layers else ""))
    backbone, head = explainer.backbone, explainer.head
    if not explainer.method.exportable:
        raise ExportError(f"{explainer.method.name!r} re-runs the network on perturbed copies; it is not "
                          "exported as one graph. Export a gradient method (gradcam, layercam, ...) instead")
    if getattr(backbone, "training", False) or getattr(head, "training", False):
        raise ExportError("the model is in training mode (batch norm and dropout would be exported as such); "
                          "call model.eval() before exporting")
    if not isinstance(backbone, nn.Module) or not isinstance(head, nn.Module):
        raise ExportError("export needs the backbone and head as nn.Modules (Explainer.from_parts was given plain callables)")
    if explainer.reshape is not None:
        raise ExportError("explainers with reshape= (vision transformer token layers) are not exportable yet; "
                          "use the eager Explainer for them")
    _check_example(example_input, backbone, explainer)
    try:
        with torch.no_grad():
            activations, skips = unpack_backbone(backbone(example_input))
            logits = head(activations.clone(), *skips)
    except RuntimeError as exc:
        raise InputError(
            f"the model could not run on the example of shape {tuple(example_input.shape)} "
            f"({str(exc).strip().splitlines()[0]}); pass an example batch the model takes"
        ) from exc
    if not isinstance(logits, Tensor) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ExportError(f"the model returns {shape}; exported graphs explain classifiers with "
                          "(N, num_classes) logits (segmentation and embedding targets need the eager Explainer)")
    if any(not isinstance(s, Tensor) for s in skips):
        raise ExportError(f"the head at {explainer.layer!r} reads non-tensor values from the backbone; pick another layer")
    if part == "head" and skips:
        raise ExportError(
            f"the head at {explainer.layer!r} also reads {len(skips)} tensor(s) computed before the layer "
            "(a residual or concatenation input), so it cannot run from the activations alone; "
            "export part='full', or pick a layer at a block boundary (e.g. 'layer4', not 'layer4.0.bn2')"
        )
    if activations.ndim != 4:
        raise ExportError(f"layer {explainer.layer!r} outputs {tuple(activations.shape)}, not (N, C, h, w)")
    if activations.shape[-2] * activations.shape[-1] == 1:
        raise ExportError(
            f"layer {explainer.layer!r} outputs {tuple(activations.shape)} for this example: a 1x1 map has no "
            "spatial extent to explain (the graph would return all-zero maps); pick an earlier layer or a "
            "larger example"
        )
    first = example_input if part == "full" else activations
    info = GraphInfo(
        part=part, method=explainer.method.name, layer=explainer.layer,
        input_shape=tuple(int(d) for d in first.shape[1:]),
        image_size=(int(example_input.shape[-2]), int(example_input.shape[-1])),
        num_classes=int(logits.shape[1]), format=fmt,
    )
    if explainer.input_layout == "nhwc" and part == "full":
        info = replace(info, input_layout="nhwc", input_shape=(*info.input_shape[1:], info.input_shape[0]))
    return ExportParts(backbone, head, explainer.method, activations, tuple(skips), info)


def in_model_layout(module: nn.Module, info: GraphInfo) -> nn.Module:
    """The graph taking images as the model does: wrapped in :class:`~export.graph.ChannelsLastInput`
    for ``nhwc`` models, unchanged otherwise."""
    from export.graph import ChannelsLastInput

    if info.input_layout != "nhwc":
        return module
    wrapped = ChannelsLastInput(module)
    object.__setattr__(wrapped, "training", False)
    return wrapped


def model_layout_input(module: nn.Module, info: GraphInfo, first: Tensor) -> Tuple[nn.Module, Tensor]:
    """:func:`in_model_layout`, and the example first input ``(N, C, H, W)`` in that layout."""
    wrapped = in_model_layout(module, info)
    return wrapped, (first.permute(0, 2, 3, 1).contiguous() if wrapped is not module else first)


def check_destination(path: str | os.PathLike) -> None:
    """Raise :class:`ExportError` before any work when ``path``'s folder is missing or not writable."""
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise ExportError(f"cannot write {os.fspath(path)}: {folder} is not a writable folder")
    if os.path.isdir(os.fspath(path)):
        raise ExportError(f"cannot write {os.fspath(path)}: it is a folder; give a file name")


def _check_example(example: Tensor, backbone: nn.Module, explainer: Explainer) -> None:
    """A clear :class:`InputError` for an example of the wrong type, rank, dtype or channel count."""
    if not isinstance(example, Tensor) or example.ndim != 4 or example.shape[0] < 1:
        shape = tuple(example.shape) if isinstance(example, Tensor) else type(example).__name__
        raise InputError(f"example_input must be a non-empty image batch tensor (N, C, H, W), got {shape}")
    dtype = next((p.dtype for p in backbone.parameters() if p.is_floating_point()), torch.float32)
    if example.dtype != dtype:
        raise InputError(f"example_input is {example.dtype}, the model's weights are {dtype}: "
                         f"pass example.to({dtype})")
    channels = getattr(explainer, "_in_channels", None)
    if channels is not None and example.shape[1] != channels:
        raise InputError(f"example_input has {example.shape[1]} channels; the model's first convolution expects "
                         f"{channels}: (N, {channels}, H, W)")


class MethodModule(nn.Module):
    """Wraps a method's ``compute`` function as a module (TorchScript compiles the function itself)."""


def method_module(method: CamMethod) -> nn.Module:
    """A module whose forward is ``method.compute(activations (N, C, h, w), gradients (N, 1, C, h, w))``."""
    fn = method.compute

    class _Method(MethodModule):
        def forward(self, activations: Tensor, gradients: Tensor) -> Tensor:
            return fn(activations, gradients)

    _Method.__name__ = f"Method_{method.name.replace('-', '_').replace('+', 'p')}"
    return _Method()


def head_caller(head: nn.Module, n_packed: int) -> fx.GraphModule:
    """``(activations, packed: Tuple[Tensor, ...]) -> head(activations, *packed[1:])`` as scriptable code.

    ``packed`` is the backbone's whole output; its first item (the activations
    without grad) is not used, the skips after it are.
    """
    graph = fx.Graph()
    activations = graph.placeholder("activations")
    packed = graph.placeholder("packed")
    packed.type = Tuple[(Tensor,) * n_packed]
    skips = [graph.call_function(operator.getitem, (packed, i)) for i in range(1, n_packed)]
    graph.output(graph.call_module("head", (activations, *skips)))
    root = nn.Module()
    root.head = head
    return fx.GraphModule(root, graph, class_name="HeadCaller")


class AsTuple(nn.Module):
    """The "backbone" of a head-only graph: the activations themselves, as a 1-tuple."""

    def forward(self, activations: Tensor) -> Tuple[Tensor]:
        return (activations,)
