"""An ONNX file turned into a PyTorch module that the split, every method and both exports handle.

:func:`read_model` loads and checks the file; :func:`to_torch` converts the normalised graph with
onnx2torch (plus :mod:`explainer.onnx_import.converters`) into :class:`OnnxModule`, which takes
``(N, C, H, W)`` images whatever the file's own layout. (No ``from __future__ import annotations``:
TorchScript reads :class:`OnnxModule`'s annotations as objects.)
"""

import os
from dataclasses import dataclass

import onnx
import torch
from torch import Tensor, nn

from explainer.errors import OnnxModelError

LAYOUTS = ("nchw", "nhwc")


def read_model(source: str | os.PathLike | onnx.ModelProto | bytes) -> onnx.ModelProto:
    """The ONNX model at ``source`` (a path, serialized bytes or a ModelProto), checked.

    Raises FileNotFoundError for a missing file and :class:`OnnxModelError` for one that is not
    a valid ONNX model or has not exactly one image input.
    """
    if isinstance(source, onnx.ModelProto):
        model = source
    else:
        if not isinstance(source, bytes):
            path = os.fspath(source)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no ONNX file at {path}")
        try:
            model = onnx.load_model_from_string(source) if isinstance(source, bytes) else onnx.load(path)
        except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and others
            raise OnnxModelError(f"{source if not isinstance(source, bytes) else 'the bytes'} is not an ONNX model "
                                 f"({type(exc).__name__}: {str(exc).strip()[:200]})") from exc
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - onnx.checker.ValidationError and friends
        raise OnnxModelError(f"the ONNX model is not valid: {str(exc).strip().splitlines()[0][:300]}") from exc
    inputs = image_inputs(model)
    if len(inputs) != 1:
        raise OnnxModelError(f"the ONNX model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                             "deploycam explains models with one image input")
    t = inputs[0].type.tensor_type
    if t.elem_type != onnx.TensorProto.FLOAT:
        raise OnnxModelError(f"the ONNX model's input {inputs[0].name!r} is "
                             f"{onnx.TensorProto.DataType.Name(t.elem_type)}; deploycam explains float32 inputs")
    if t.HasField("shape") and len(t.shape.dim) != 4:
        raise OnnxModelError(f"the ONNX model's input {inputs[0].name!r} has rank {len(t.shape.dim)}; "
                             "deploycam explains image inputs (N, C, H, W) or (N, H, W, C)")
    return model


def image_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs that are not initializers."""
    initializers = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def input_shape(model: onnx.ModelProto) -> tuple[int | str | None, ...]:
    """The image input's shape (ints where fixed, symbols or None otherwise)."""
    dims = image_inputs(model)[0].type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims)


class OnnxModule(nn.Module):
    """A converted ONNX graph behind an ``(N, C, H, W)`` front.

    ``forward(x (N, C, H, W)) -> the graph's output(s)``; for ``layout="nhwc"`` graphs the images
    are transposed to ``(N, H, W, C)`` first. ``onnx`` is onnx2torch's fx GraphModule, one
    submodule per ONNX node, named after the node.
    """

    def __init__(self, graph: nn.Module, layout: str) -> None:
        super().__init__()
        self.onnx = graph
        self.layout = layout

    def forward(self, x: Tensor):
        if self.layout == "nhwc":
            x = x.permute(0, 2, 3, 1)
        return self.onnx(x)


@dataclass(frozen=True)
class Converted:
    """:class:`OnnxModule` plus what the split needs: each node's submodule path in the OnnxModule,
    by the node's index in the graph."""

    module: OnnxModule
    node_paths: dict[int, str]


def to_torch(model: onnx.ModelProto, layout: str) -> Converted:
    """Convert a normalised ONNX model; raises :class:`OnnxModelError` naming the operators onnx2torch lacks."""
    from onnx2torch.onnx_graph import OnnxGraph

    graph = convert_graph(model)
    names = list(OnnxGraph(model.graph).nodes)  # onnx2torch's module names, in node order
    return Converted(OnnxModule(graph, layout).eval(), {i: f"onnx.{n}" for i, n in enumerate(names)})


def convert_graph(model: onnx.ModelProto) -> nn.Module:
    """onnx2torch's ``fx.GraphModule`` of ``model`` (inputs in the graph's order), in eval mode, with
    constant shapes made static; :class:`OnnxModelError` naming the operators onnx2torch lacks."""
    try:
        import onnx2torch
    except ImportError as exc:
        raise OnnxModelError("explaining ONNX files with gradient methods needs onnx2torch: "
                             "pip install 'deploycam[onnx]'") from exc
    from explainer.onnx_import.converters import register
    from explainer.onnx_import.static_ops import make_static

    register()
    missing = unsupported_ops(model)
    if missing:
        raise OnnxModelError(f"onnx2torch cannot convert {', '.join(missing)}")
    try:
        graph = onnx2torch.convert(model)
    except Exception as exc:  # noqa: BLE001 - converters raise NotImplementedError, KeyError, ...
        raise OnnxModelError(f"onnx2torch could not convert the graph ({type(exc).__name__}: "
                             f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''})") from exc
    graph.eval()
    make_static(graph)
    return graph


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """``"Op-version"`` for every operator of ``model`` onnx2torch has no converter for."""
    from onnx2torch.node_converters.registry import get_converter

    from explainer.onnx_import.converters import register

    register()
    opsets = {o.domain or "": o.version for o in model.opset_import}
    missing = []
    for node in model.graph.node:
        domain = node.domain or ""
        key = f"{(domain + '.') if domain else ''}{node.op_type}-{opsets.get(domain, '?')}"
        try:
            get_converter(node.op_type, opsets.get(domain, 1), domain)
        except NotImplementedError:
            if key not in missing:
                missing.append(key)
    return missing


def check_layout(layout: str) -> str:
    """``layout`` lower-cased, or :class:`OnnxModelError` unless it is nchw or nhwc."""
    value = str(layout).lower()
    if value not in LAYOUTS:
        raise OnnxModelError(f"input_layout must be 'nchw' or 'nhwc' (TensorFlow-style images), got {layout!r}")
    return value


def as_batch(x, layout: str, dtype: torch.dtype = torch.float32) -> Tensor:
    """An image batch given as the model takes it (numpy or tensor, ``layout``) as an ``(N, C, H, W)`` tensor."""
    import numpy as np

    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, Tensor) and layout == "nhwc" and x.ndim == 4:
        x = x.permute(0, 3, 1, 2)
    return x
