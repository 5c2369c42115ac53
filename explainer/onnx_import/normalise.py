"""An ONNX graph rewritten, without changing what it computes, into the form deploycam converts and splits.

* Initializers routed through ``Identity`` nodes (the legacy exporter shares one zero bias between
  several convolutions this way) become initializers of their own.
* ``Reshape`` with ``allowzero=1`` and a constant shape that holds no 0 behaves exactly as with
  ``allowzero=0``; the attribute is dropped.
* Batch: a graph exported for a fixed batch of 1 (torch's exporters at default settings) gets a
  symbolic batch axis, and constant ``Reshape`` shapes whose first entry is that batch copy the
  input's batch (``0``) instead, so any batch runs (perturbation methods run batches of copies).
* Stale ``value_info`` shapes are dropped (shape inference recomputes them).
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import numpy_helper

BATCH = "batch"


def normalise(model: onnx.ModelProto, dynamic_batch: bool = True) -> onnx.ModelProto:
    """A normalised copy of ``model`` (see the module docstring); ``model`` is not changed."""
    model = copy.deepcopy(model)
    graph = model.graph
    _inline_constant_identities(graph)
    inferred = tensor_shapes(model)
    constants = _constants(graph)
    static_batch = _static_batch(graph)
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in constants:
            continue
        shape = constants[node.input[1]]
        allowzero = next((a for a in node.attribute if a.name == "allowzero"), None)
        if allowzero is not None and allowzero.i == 1:
            if (shape == 0).any():
                continue  # a literal zero-size axis: left as it is (onnx2torch reports it)
            node.attribute.remove(allowzero)
        data_shape = inferred.get(node.input[0])
        if (dynamic_batch and static_batch is not None and shape.ndim == 1 and len(shape) >= 2
                and shape[0] == static_batch and data_shape and data_shape[0] == static_batch):
            new = shape.copy()
            new[0] = 0  # copy the input's batch
            name = f"{node.input[1]}__deploycam_batch_{node.name or id(node)}"
            graph.initializer.append(numpy_helper.from_array(new.astype(np.int64), name))
            node.input[1] = name
    if dynamic_batch and static_batch is not None:
        for value in list(graph.input[:1]) + list(graph.output):
            dims = value.type.tensor_type.shape.dim
            if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == static_batch:
                dims[0].dim_param = BATCH
    del graph.value_info[:]
    _drop_unused_initializers(graph)
    return model


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    unused = [i for i in graph.initializer if i.name not in used and i.name not in {g.name for g in graph.input}]
    for init in unused:
        graph.initializer.remove(init)


def _inline_constant_identities(graph: onnx.GraphProto) -> None:
    initializers = {i.name: i for i in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input and node.input[0] in initializers:
            twin = copy.deepcopy(initializers[node.input[0]])
            twin.name = node.output[0]
            graph.initializer.append(twin)
            initializers[twin.name] = twin
        else:
            keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Integer constants by name: initializers and ``Constant`` nodes' values."""
    found = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            value = next((a for a in node.attribute if a.name == "value"), None)
            if value is not None:
                found[node.output[0]] = numpy_helper.to_array(value.t)
    return {k: v for k, v in found.items() if v.dtype.kind in "iu"}


def _static_batch(graph: onnx.GraphProto) -> int | None:
    """The first real input's batch size when it is fixed (``dim_value``), else None."""
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if not inputs:
        return None
    dims = inputs[0].type.tensor_type.shape.dim
    return int(dims[0].dim_value) if len(dims) and dims[0].HasField("dim_value") else None


def tensor_info(model: onnx.ModelProto) -> tuple[dict[str, list[int | str | None]], dict[str, int]]:
    """One pass of ONNX shape inference (best effort): every tensor's shape (ints, symbols, or None per
    axis) and element type (``onnx.TensorProto`` enum), by name."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - shape inference is best effort here
        inferred = model
    shapes: dict[str, list[int | str | None]] = {}
    types: dict[str, int] = {}
    graph = inferred.graph
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        t = value.type.tensor_type
        types[value.name] = t.elem_type
        if t.HasField("shape"):
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                  for d in t.shape.dim]
    return shapes, types


def tensor_shapes(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    """Shapes of every tensor of ``model`` by name, from ONNX shape inference (see :func:`tensor_info`)."""
    return tensor_info(model)[0]
