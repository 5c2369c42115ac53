"""The tensors of an ONNX graph that can be explained: 4-D maps, the default one, and names to tensors.

A target is named by a tensor (a node output, as Netron shows it) or by a node (its first output).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from explainer.errors import LayerNotFoundError, LayerShapeError, close_matches
from explainer.onnx_import.normalise import tensor_info, tensor_shapes

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


@dataclass(frozen=True)
class GraphTensor:
    """A 4-D tensor of the graph.

    Attributes:
        name: the tensor's name.
        node: the name of the node that writes it (may be empty in hand-made graphs).
        op_type: that node's operator.
        shape: ``(N, C, h, w)`` (or ``(N, h, w, C)`` for ``layout="nhwc"``) as shape inference
            knows it: ints, symbols (the batch) or None.
        layout: ``"nchw"``, or ``"nhwc"`` when the graph pools it over axes 1 and 2 (TensorFlow style).
        index: the node's position in the graph; ``output``: which of its outputs this is.
    """

    name: str
    node: str
    op_type: str
    shape: tuple[int | str | None, ...]
    layout: str
    index: int
    output: int

    @property
    def hw(self) -> tuple[int | None, int | None]:
        """``(h, w)`` where known."""
        h, w = (self.shape[2], self.shape[3]) if self.layout == "nchw" else (self.shape[1], self.shape[2])
        return (h if isinstance(h, int) else None, w if isinstance(w, int) else None)

    def describe(self) -> str:
        dims = ", ".join("N" if i == 0 else (str(d) if isinstance(d, int) else "?") for i, d in enumerate(self.shape))
        return f"{self.name}  ({dims}){'  NHWC' if self.layout == 'nhwc' else ''}  [{self.op_type} {self.node}]"


def spatial_tensors(model: onnx.ModelProto) -> list[GraphTensor]:
    """Every 4-D floating tensor written by a node, in graph order, with h and w > 1 where known."""
    shapes, types = tensor_info(model)
    pooled_nhwc = {t for t, axes in _spatial_means(model) if axes == {1, 2}}
    found = []
    for index, node in enumerate(model.graph.node):
        for out_index, name in enumerate(node.output):
            shape = shapes.get(name)
            if not name or shape is None or len(shape) != 4 or types.get(name, onnx.TensorProto.FLOAT) not in _FLOAT_TYPES:
                continue
            layout = "nhwc" if name in pooled_nhwc else "nchw"
            tensor = GraphTensor(name, node.name, node.op_type, tuple(shape), layout, index, out_index)
            h, w = tensor.hw
            if (h is None or h > 1 or w is None or w > 1):
                found.append(tensor)
    return found


def default_tensor(model: onnx.ModelProto, tensors: list[GraphTensor] | None = None) -> GraphTensor:
    """The tensor that feeds the graph's last global pooling (GlobalAveragePool, or a ReduceMean over
    the spatial axes); without one, the last 4-D tensor with h, w > 1. :class:`LayerShapeError` if none."""
    tensors = spatial_tensors(model) if tensors is None else tensors
    if not tensors:
        raise LayerShapeError("the ONNX graph has no 4-D tensor with a spatial map larger than 1x1 to explain")
    by_name = {t.name: t for t in tensors}
    pooled = [t for t, _ in _spatial_means(model) if t in by_name]
    pooled += [n.input[0] for n in model.graph.node if n.op_type == "GlobalAveragePool" and n.input[0] in by_name]
    if pooled:
        return max((by_name[t] for t in pooled), key=lambda t: t.index)
    return tensors[-1]


def resolve(model: onnx.ModelProto, name: str, tensors: list[GraphTensor] | None = None) -> GraphTensor:
    """The 4-D tensor called ``name``, or the first output of the node called ``name``.

    Raises :class:`LayerNotFoundError` (with the closest names) for an unknown name and
    :class:`LayerShapeError` for a tensor that is not a spatial map.
    """
    tensors = spatial_tensors(model) if tensors is None else tensors
    by_tensor = {t.name: t for t in tensors}
    by_node = {t.node: t for t in tensors if t.node and t.output == 0}
    if name in by_tensor:
        return by_tensor[name]
    if name in by_node:
        return by_node[name]
    every_tensor = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    every_node = {n.name: n for n in model.graph.node if n.name}
    if name in every_tensor or name in every_node:
        tensor = every_node[name].output[0] if name in every_node else name
        shape = tensor_shapes(model).get(tensor)
        raise LayerShapeError(
            f"{name!r} is {'a graph input' if tensor in {i.name for i in model.graph.input} else 'a tensor'} of shape "
            f"{tuple(shape) if shape else 'unknown'}, not a spatial map (N, C, h, w) with h, w > 1; "
            f"4-D tensors: {', '.join(t.name for t in tensors[-5:])}"
        )
    near = close_matches(name, list(by_tensor) + list(by_node))
    hint = f" (did you mean {', '.join(near)}?)" if near else ""
    raise LayerNotFoundError(
        f"no tensor or node called {name!r} in the ONNX graph{hint}; list the 4-D tensors with "
        "`deploycam layers --onnx FILE` or explainer.onnx_import.spatial_tensors"
    )


def _spatial_means(model: onnx.ModelProto) -> list[tuple[str, set[int]]]:
    """``(input tensor, axes)`` of ReduceMean nodes over two spatial axes of a 4-D tensor."""
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    found = []
    for node in model.graph.node:
        if node.op_type != "ReduceMean":
            continue
        axes_attr = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
        if axes_attr is None and len(node.input) > 1 and node.input[1] in constants:
            axes_attr = [int(a) for a in np.asarray(constants[node.input[1]]).reshape(-1)]
        if axes_attr is None:
            continue
        axes = {a % 4 for a in axes_attr}
        if axes in ({2, 3}, {1, 2}):
            found.append((node.input[0], axes))
    return found
