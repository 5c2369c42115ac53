"""onnx2torch modules that read shapes from tensors, replaced by modules with the constants as plain ints.

onnx2torch converts ``Reshape``, ``Squeeze``/``Unsqueeze``-13, ``Expand``, ``Tile`` and ``Slice`` into
modules that take the shape, axes or indices as a tensor argument at run time. When that argument is
a constant of the graph (it nearly always is in CNNs), :func:`make_static` swaps the module for one
holding the values: symbolic tracing (``torch.export``, ``make_fx``, used by the ONNX export of the
explanation) cannot follow shapes read from tensors, and the static form is also cheaper.
"""

import torch
from torch import Tensor, fx, nn


class StaticReshape(nn.Module):
    """ONNX ``Reshape`` to a constant shape (``allowzero=0``): 0 copies the input's axis, -1 is inferred."""

    def __init__(self, shape: list[int]) -> None:
        super().__init__()
        self.shape = [int(s) for s in shape]

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape([x.shape[i] if s == 0 else s for i, s in enumerate(self.shape)])


class StaticSqueeze(nn.Module):
    """ONNX ``Squeeze`` over constant axes (all size-1 axes when none are given)."""

    def __init__(self, axes: list[int] | None) -> None:
        super().__init__()
        self.axes = None if axes is None else [int(a) for a in axes]

    def forward(self, x: Tensor) -> Tensor:
        if not self.axes:
            return torch.squeeze(x)
        return torch.squeeze(x, dim=tuple(a % x.dim() for a in self.axes))


class StaticUnsqueeze(nn.Module):
    """ONNX ``Unsqueeze`` at constant axes (of the output)."""

    def __init__(self, axes: list[int]) -> None:
        super().__init__()
        self.axes = [int(a) for a in axes]

    def forward(self, x: Tensor) -> Tensor:
        rank = x.dim() + len(self.axes)
        for axis in sorted(a % rank for a in self.axes):
            x = torch.unsqueeze(x, axis)
        return x


class StaticExpand(nn.Module):
    """ONNX ``Expand`` (bidirectional broadcast) to a constant shape."""

    def __init__(self, shape: list[int]) -> None:
        super().__init__()
        self.shape = [int(s) for s in shape]

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.ones(self.shape, dtype=x.dtype, device=x.device)


class StaticTile(nn.Module):
    """ONNX ``Tile`` by constant repeats."""

    def __init__(self, repeats: list[int]) -> None:
        super().__init__()
        self.repeats = [int(r) for r in repeats]

    def forward(self, x: Tensor) -> Tensor:
        return x.repeat(self.repeats)


class StaticSlice(nn.Module):
    """ONNX ``Slice`` with constant starts, ends, axes and steps (clamped as ONNX specifies; a negative
    step walks backwards: the axis is flipped, then sliced forwards)."""

    def __init__(self, starts: list[int], ends: list[int], axes: list[int] | None, steps: list[int] | None) -> None:
        super().__init__()
        self.starts = [int(s) for s in starts]
        self.ends = [int(e) for e in ends]
        self.axes = list(range(len(self.starts))) if axes is None else [int(a) for a in axes]
        self.steps = [1] * len(self.starts) if steps is None else [int(s) for s in steps]

    def forward(self, x: Tensor) -> Tensor:
        index = [slice(None)] * x.dim()
        flips = []
        for start, end, axis, step in zip(self.starts, self.ends, self.axes, self.steps):
            axis = axis % x.dim()
            size = int(x.shape[axis])
            if step > 0:
                end = min(end, size) if end >= 0 else end  # ONNX uses INT64_MAX for "to the end"
                index[axis] = slice(start, end, step)
                continue
            start = min(max(start + size if start < 0 else start, 0), size - 1)
            end = min(max(end + size if end < 0 else end, -1), size - 1)  # INT64_MIN: "to the beginning"
            flips.append(axis)  # element i of the axis is element size - 1 - i of the flipped axis
            index[axis] = slice(size - 1 - start, size - 1 - end, -step) if start > end else slice(0, 0)
        if flips:
            x = torch.flip(x, dims=flips)
        return x[tuple(index)]


def _constant(graph: fx.GraphModule, node: object) -> list[int] | None:
    """The integer values of an argument that is a constant (an initializer, ``get_attr``, or an ONNX
    ``Constant`` node, onnx2torch's ``OnnxConstant``), or None when it is computed at run time."""
    from onnx2torch.node_converters.constant import OnnxConstant

    if not isinstance(node, fx.Node) or not isinstance(node.target, str):
        return None
    if node.op == "get_attr":
        value = graph.get_buffer(node.target) if "." in node.target else getattr(graph, node.target)
    elif node.op == "call_module" and not node.args and isinstance(graph.get_submodule(node.target), OnnxConstant):
        value = graph.get_submodule(node.target).value
    else:
        return None
    if not isinstance(value, Tensor) or value.is_floating_point():
        return None
    return [int(v) for v in value.reshape(-1).tolist()]


def make_static(graph: fx.GraphModule) -> int:
    """Replace shape-reading onnx2torch modules whose arguments are constants; returns how many."""
    from onnx2torch.node_converters.expand import OnnxExpand
    from onnx2torch.node_converters.reshape import OnnxReshape
    from onnx2torch.node_converters.slice import OnnxSlice
    from onnx2torch.node_converters.squeeze import OnnxSqueezeDynamicAxes
    from onnx2torch.node_converters.tile import OnnxTile
    from onnx2torch.node_converters.unsqueeze import OnnxUnsqueezeDynamicAxes

    replaced = 0
    for node in list(graph.graph.nodes):
        if node.op != "call_module" or not node.args:
            continue
        module = graph.get_submodule(node.target)
        first, rest = node.args[0], node.args[1:]
        values = [_constant(graph, a) if a is not None else None for a in rest]
        if any(v is None for v, a in zip(values, rest) if a is not None):
            continue  # an argument computed at run time: keep onnx2torch's module
        given = [v for v in values if v is not None]
        static: nn.Module | None = None
        if isinstance(module, OnnxReshape) and len(given) == len(values) == 1:
            static = StaticReshape(given[0])
        elif isinstance(module, OnnxSqueezeDynamicAxes) and len(values) <= 1:
            static = StaticSqueeze(given[0] if given else None)
        elif isinstance(module, OnnxUnsqueezeDynamicAxes) and len(given) == len(values) == 1:
            static = StaticUnsqueeze(given[0])
        elif isinstance(module, OnnxExpand) and len(given) == len(values) == 1:
            static = StaticExpand(given[0])
        elif isinstance(module, OnnxTile) and len(given) == len(values) == 1:
            static = StaticTile(given[0])
        elif isinstance(module, OnnxSlice) and 2 <= len(values) <= 4 and node.kwargs == {}:
            starts, ends, axes, steps = (values + [None] * 4)[:4]
            if starts is not None and ends is not None and (steps is None or all(s != 0 for s in steps)):
                static = StaticSlice(starts, ends, axes, steps)
        if static is not None:
            graph.add_submodule(node.target, static)
            node.args = (first,)
            replaced += 1
    graph.graph.eliminate_dead_code()
    graph.graph.lint()
    graph.recompile()
    return replaced


def fold_shapes(graph: fx.GraphModule, *example_inputs: Tensor) -> fx.GraphModule:
    """A copy of ``graph`` specialised to the shapes of ``example_inputs``: every value computed from shapes
    alone (an ONNX ``Shape`` and what is computed from it and constants: a reshape's target shape, a
    detector head's anchor grid) becomes a constant buffer, and :func:`make_static` then swaps the modules
    that read them for static ones.

    The copy is right for inputs of exactly those shapes only (batch included): it is how a graph whose
    ``Reshape`` targets come from ``Shape`` (ultralytics' ``dynamic=True`` exports) is traced by ``make_fx``
    for an export of fixed shapes. ``graph`` itself is not changed.
    """
    import copy

    from onnx2torch.node_converters.constant import OnnxConstant
    from onnx2torch.node_converters.shape import OnnxShape

    folded = copy.deepcopy(graph)
    values: dict[fx.Node, object] = {}
    static: set[fx.Node] = set()

    class _Record(fx.Interpreter):
        def run_node(self, n: fx.Node) -> object:
            out = super().run_node(n)
            values[n] = out
            inputs = n.all_input_nodes
            if n.op == "get_attr":
                static.add(n)
            elif n.op == "call_module":
                module = folded.get_submodule(str(n.target))
                if isinstance(module, OnnxShape) or (isinstance(module, OnnxConstant) and not inputs) or (
                        inputs and all(i in static for i in inputs) and not any(True for _ in module.parameters())):
                    static.add(n)
            elif n.op in ("call_function", "call_method") and inputs and all(i in static for i in inputs):
                static.add(n)
            return out

    with torch.no_grad():
        _Record(folded).run(*example_inputs)
    count = 0
    for node in list(folded.graph.nodes):
        value = values.get(node)
        if node not in static or node.op == "get_attr" or not isinstance(value, Tensor):
            continue
        if all(user in static for user in node.users):
            continue  # an inner value: folded into the constant of its users
        name = f"folded_shape_{count}"
        count += 1
        folded.register_buffer(name, value.detach().clone())
        with folded.graph.inserting_before(node):
            constant = folded.graph.get_attr(name)
        node.replace_all_uses_with(constant)
    folded.graph.eliminate_dead_code()
    folded.recompile()
    make_static(folded)
    return folded
