"""Split a classifier at a layer into ``backbone`` and ``head`` graphs, with torch.fx.

The split needs no hooks and leaves the model untouched: both halves are
:class:`torch.fx.GraphModule` objects that *share* the model's submodules and
parameters (nothing is copied, so later weight updates are seen).

* ``backbone(x) -> (activations, *skips)`` computes the target layer's output
  ``(N, C, h, w)`` and every other value the rest of the network reads but that
  does not depend on the activations ("skips": residual inputs, DenseNet's
  earlier features, the batch size).
* ``head(activations, *skips) -> logits`` is everything downstream of the layer.

Because the skips do not depend on the activations, ``d head / d activations``
is exactly the gradient of the logits with respect to the layer's output in the
original model.

The target is a module name (``"layer4"``, ``"features.denseblock4"``), the
module object, or a node name of the traced graph as listed by
:func:`torchvision.models.feature_extraction.get_graph_node_names` (``"layer4.1.add"``,
``"_swish_1"``); a module target is traced as a single leaf, so its own
internals (even untraceable ones) do not matter.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import fx, nn
from torchvision.models.feature_extraction import NodePathTracer

from explainer.errors import LayerNotFoundError, TraceError, close_matches
from explainer.tracing_lock import tracing

LayerSpec = str | nn.Module
LeafSpec = type | str | nn.Module


class _Tracer(NodePathTracer):
    """NodePathTracer that also treats given module *instances* and names as leaves."""

    def __init__(self, leaf_names: Iterable[str], leaf_types: Sequence[type],
                 autowrap_functions: Sequence = ()) -> None:
        super().__init__(autowrap_modules=(math, torchvision.ops), leaf_modules=list(leaf_types),
                         autowrap_functions=tuple(autowrap_functions))
        self._leaf_names = set(leaf_names)

    def is_leaf_module(self, m: nn.Module, module_qualname: str) -> bool:
        return module_qualname in self._leaf_names or super().is_leaf_module(m, module_qualname)


@dataclass(frozen=True)
class TracedModel:
    """A model's fx graph plus each node's hierarchical name (torchvision's naming)."""

    graph: fx.Graph
    qualnames: dict[fx.Node, str]


def _module_names(model: nn.Module) -> dict[int, str]:
    return {id(m): name for name, m in model.named_modules() if name}


def _normalise_leaves(model: nn.Module, leaves: Iterable[LeafSpec]) -> tuple[list[str], list[type]]:
    names, types = [], []
    by_id = _module_names(model)
    known = [name for name, _ in model.named_modules(remove_duplicate=False) if name]
    for leaf in leaves:
        if isinstance(leaf, type):
            types.append(leaf)
        elif isinstance(leaf, nn.Module):
            if id(leaf) not in by_id:
                raise LayerNotFoundError("a module given in leaf_modules is not a submodule of this model")
            names.append(by_id[id(leaf)])
        elif isinstance(leaf, str):
            if leaf not in known:
                suggestions = close_matches(leaf, known)
                hint = f"; closest: {', '.join(suggestions)}" if suggestions else ""
                raise LayerNotFoundError(f"leaf_modules names {leaf!r}, which is no submodule of "
                                         f"{type(model).__name__}{hint}")
            names.append(leaf)
        else:
            raise LayerNotFoundError(f"leaf_modules holds {leaf!r}; give module names, types or module objects")
    return names, types


def _library_notrace(model: nn.Module) -> tuple[list[type], list]:
    """Modules and functions a model's own library marks as untraceable by torch.fx.

    timm registers its data-dependent modules (``Conv2dSame``'s ``pad_same``, MobileViT blocks...)
    and functions in ``timm.layers._fx``; for models built by timm they become leaves.
    """
    if not type(model).__module__.startswith("timm."):
        return [], []
    try:
        from timm.layers import _fx as timm_fx
    except ImportError:  # pragma: no cover - a timm model without timm importable
        return [], []
    return list(timm_fx.get_notrace_modules()), list(timm_fx.get_notrace_functions())


def trace_model(model: nn.Module, leaf_modules: Iterable[LeafSpec] = ()) -> TracedModel:
    """Trace ``model`` with torch.fx (in its current train/eval mode).

    ``leaf_modules`` (types, names or module objects) are kept as single call
    nodes instead of being traced through: use it for modules with data-dependent
    control flow. Models from timm get timm's own list of untraceable modules and
    functions as well. Raises :class:`TraceError` with advice when tracing fails.
    """
    names, types = _normalise_leaves(model, leaf_modules)
    library_types, library_functions = _library_notrace(model)
    tracer = _Tracer(names, types + library_types, library_functions)
    try:
        with tracing():  # fx patches nn.Module.__call__ process-wide while it traces
            graph = tracer.trace(model)
    except Exception as exc:  # fx raises many types (TraceError, TypeError, RuntimeError...)
        culprit = _innermost_module(exc, model)
        advice = (f"the failure is inside {culprit!r}: pass leaf_modules=[{culprit!r}] (or its type) so it is "
                  "not traced through" if culprit else
                  "if a submodule has data- or shape-dependent control flow, pass it in leaf_modules=[...] "
                  "(a name, type or module object) so it is not traced through")
        raise TraceError(
            f"torch.fx could not trace {type(model).__name__}: {type(exc).__name__}: {exc}\n"
            f"{advice[0].upper() + advice[1:]}; or build the explainer with "
            "Explainer.from_parts(backbone, head, method=...)."
        ) from exc
    return TracedModel(graph, dict(tracer.node_to_qualname))


def _innermost_module(exc: BaseException, model: nn.Module) -> str | None:
    """The name of the deepest submodule whose ``forward`` is on the failing trace's stack, if any."""
    by_code: dict[object, list[str]] = {}
    for name, module in model.named_modules():
        forward = getattr(type(module), "forward", None)
        code = getattr(forward, "__code__", None)
        if name and code is not None:
            by_code.setdefault(code, []).append(name)
    found = None
    tb = exc.__traceback__
    while tb is not None:
        names = by_code.get(tb.tb_frame.f_code)
        if names:
            module = tb.tb_frame.f_locals.get("self")
            exact = [n for n in names if model.get_submodule(n) is module]
            found = (exact or names)[0]
        tb = tb.tb_next
    return found


@dataclass(frozen=True)
class SplitModel:
    """The two halves of a model split at a layer.

    Attributes:
        backbone: ``x (N, 3, H, W) -> (activations (N, C, h, w), *skips)``.
        head: ``(activations, *skips) -> logits (N, num_classes)``.
        layer: the resolved target name (module or node name).
        skip_names: names of the extra values passed from backbone to head.
        in_channels: channels the first convolution expects, when it can be read.
        training: the model's ``training`` flag when it was traced.
    """

    backbone: fx.GraphModule
    head: fx.GraphModule
    layer: str
    skip_names: tuple[str, ...]
    in_channels: int | None
    training: bool


def _resolve_target(model: nn.Module, target: LayerSpec) -> tuple[str, bool]:
    """(name, is_module) for a target given as a module object or a name."""
    if isinstance(target, nn.Module):
        if target is model:
            raise LayerNotFoundError("the target layer is the whole model; pick a submodule such as its last conv block")
        name = _module_names(model).get(id(target))
        if name is None:
            raise LayerNotFoundError(
                f"the target module {type(target).__name__} is not a submodule of {type(model).__name__}"
            )
        return name, True
    if not isinstance(target, str) or not target:
        raise LayerNotFoundError(f"target_layer must be a module or a non-empty dotted name, got {target!r}")
    return target, target in dict(model.named_modules())


def _find_target_node(traced: TracedModel, name: str, is_module: bool, model: nn.Module) -> fx.Node:
    if is_module:
        calls = [n for n in traced.graph.nodes if n.op == "call_module" and n.target == name]
        if len(calls) == 1:
            return calls[0]
        if not calls:
            raise LayerNotFoundError(
                f"module {name!r} exists but is never called in {type(model).__name__}.forward "
                f"(in {'training' if model.training else 'eval'} mode); pick a layer the forward pass uses"
            )
        listed = ", ".join(repr(traced.qualnames[c]) for c in calls)
        raise LayerNotFoundError(
            f"module {name!r} is called {len(calls)} times in forward (nodes {listed}); "
            "name one call by its node name instead"
        )
    by_qualname = {q: n for n, q in traced.qualnames.items() if n.op not in ("placeholder", "output", "get_attr")}
    if name in by_qualname:
        return by_qualname[name]
    candidates = [m for m, _ in model.named_modules() if m] + list(by_qualname)
    suggestions = close_matches(name, candidates)
    hint = f"; closest: {', '.join(suggestions)}" if suggestions else ""
    raise LayerNotFoundError(
        f"no layer {name!r} in {type(model).__name__}{hint}. "
        "Run `deploycam layers --model ...` or explainer.list_layers(model) for every name."
    )


def _is_batch_size(node: fx.Node) -> bool:
    """``x.size(0)``, ``x.size()[0]`` or ``x.shape[0]``: equal to the activations' batch size."""
    if node.op == "call_method" and node.target == "size":
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return bool(dim == 0)
    if node.op == "call_function" and node.target is operator.getitem and node.args[1] == 0:
        src = node.args[0]
        return bool(isinstance(src, fx.Node) and (
            (src.op == "call_function" and src.target is getattr and src.args[1] == "shape")
            or (src.op == "call_method" and src.target == "size" and len(src.args) == 1 and not src.kwargs)
        ))
    return False


def _first_conv_in_channels(gm: fx.GraphModule) -> int | None:
    for node in gm.graph.nodes:
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            if isinstance(mod, nn.Conv2d):
                return mod.in_channels
            if isinstance(mod, nn.Module) and any(isinstance(m, nn.Conv2d) for m in mod.modules()):
                first = next(m for m in mod.modules() if isinstance(m, nn.Conv2d))
                return first.in_channels
        if node.op == "call_function" and node.target in (F.conv2d, torch.conv2d):
            weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
            if isinstance(weight, fx.Node) and weight.op == "get_attr":
                w = _fetch_attr(gm, str(weight.target))
                groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
                return int(w.shape[1]) * int(groups)
            return None
    return None


def _fetch_attr(module: nn.Module, target: str):
    obj = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def split_model(
    model: nn.Module,
    target_layer: LayerSpec,
    leaf_modules: Iterable[LeafSpec] = (),
) -> SplitModel:
    """Split ``model`` at ``target_layer`` into backbone and head graphs (see module doc).

    Raises:
        LayerNotFoundError: unknown name (the message lists close matches), a module
            the forward never calls, or one it calls more than once.
        TraceError: the model cannot be traced by torch.fx.
    """
    name, is_module = _resolve_target(model, target_layer)
    leaves = list(leaf_modules) + ([name] if is_module else [])
    traced = trace_model(model, leaves)
    graph = traced.graph
    target = _find_target_node(traced, name, is_module, model)

    # Nodes whose value depends on the target (strict descendants) form the head.
    downstream: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op != "output" and any(i is target or i in downstream for i in node.all_input_nodes):
            downstream.add(node)
    output = next(n for n in graph.nodes if n.op == "output")

    readers = list(downstream) + [output]
    needed = {i for r in readers for i in r.all_input_nodes}
    skips = [
        n for n in graph.nodes
        if n in needed and n is not target and n not in downstream and n.op != "get_attr" and not _is_batch_size(n)
    ]
    batch_nodes = [n for n in graph.nodes if n in needed and n not in downstream and _is_batch_size(n)]

    # Backbone: every node not downstream of the target, in the original order.
    bb_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        if node.op == "output" or node in downstream:
            continue
        env[node] = bb_graph.node_copy(node, lambda n: env[n])
    bb_graph.output((env[target], *[env[s] for s in skips]))

    # Head: a placeholder for the activations and each skip, then the downstream nodes.
    hd_graph = fx.Graph()
    henv: dict[fx.Node, fx.Node] = {target: hd_graph.placeholder("activations")}
    for s in skips:
        henv[s] = hd_graph.placeholder(f"skip_{s.name}")
    for b in batch_nodes:
        henv[b] = hd_graph.call_method("size", (henv[target], 0))

    def lookup(n: fx.Node) -> fx.Node:
        if n not in henv:
            if n.op != "get_attr":  # pragma: no cover - every other input is mapped above
                raise TraceError(f"internal: node {n.name} is read by the head but was not passed to it")
            henv[n] = hd_graph.node_copy(n)
        return henv[n]

    for node in graph.nodes:
        if node in downstream:
            henv[node] = hd_graph.node_copy(node, lookup)
    # the model's return annotation (Inception's InceptionOutputs) describes the model, not the head
    hd_graph.node_copy(output, lookup).type = None

    try:
        backbone = fx.GraphModule(model, bb_graph, class_name="Backbone")
        head = fx.GraphModule(model, hd_graph, class_name="Head")
        backbone.graph.lint()
        head.graph.lint()
    except Exception as exc:
        raise TraceError(f"could not build the backbone/head graphs at {name!r}: {exc}") from exc
    # GraphModule() copies the root's training flag only onto itself; keep it equal
    # to the model's without touching the shared submodules.
    object.__setattr__(backbone, "training", model.training)
    object.__setattr__(head, "training", model.training)
    return SplitModel(
        backbone=backbone,
        head=head,
        layer=traced.qualnames.get(target, name) if not is_module else name,
        skip_names=tuple(traced.qualnames.get(s, s.name) for s in skips),
        in_channels=_first_conv_in_channels(backbone),
        training=model.training,
    )
