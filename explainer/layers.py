"""List a model's layers with their output shapes, to help pick a target layer."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from explainer.errors import InputError, LayerShapeError
from explainer.reshape import fits_aspect
from explainer.split import LeafSpec, trace_model
from explainer.tracing_lock import running


@dataclass(frozen=True)
class LayerInfo:
    """One candidate target.

    Attributes:
        name: module name (``"layer4"``) or, for ``nodes=True``, an fx node name (``"layer4.1.add"``).
        kind: the module's class name, or the node's operation.
        shape: output shape for the probe input, ``(N, C, h, w)`` for spatial maps; None if not a tensor.
        calls: how many times the forward pass calls the module (a target must be called once,
            or be named by node).
        position: execution index of the node that produces this output.
        image_size: ``(H, W)`` of the probe input, to tell image-shaped maps from other 4-D tensors.
    """

    name: str
    kind: str
    shape: tuple[int, ...] | None
    calls: int = 1
    position: int = 0
    image_size: tuple[int, int] | None = None

    @property
    def is_spatial(self) -> bool:
        """True for ``(N, C, h, w)`` outputs with more than one position whose ``h x w`` has the input's
        aspect ratio (a map of the image): a valid CAM target. Attention tensors such as
        ``(N, heads, tokens, dim)`` are 4-D but not spatial."""
        if self.shape is None or len(self.shape) != 4 or self.shape[2] * self.shape[3] <= 1:
            return False
        return self.image_size is None or fits_aspect((self.shape[2], self.shape[3]), self.image_size)


def _node_shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def list_layers(
    model: nn.Module,
    input_size: tuple[int, int, int, int] = (1, 3, 224, 224),
    *,
    nodes: bool = False,
    leaf_modules: Iterable[LeafSpec] = (),
) -> list[LayerInfo]:
    """Every module (or, with ``nodes=True``, every traced node) in execution order, with its output shape.

    The shapes come from one forward of a zero tensor of ``input_size`` through an
    eval-mode *copy* of the model (the model itself is not run or changed).
    """
    probe = copy.deepcopy(model).eval()
    traced = trace_model(probe, leaf_modules)
    gm = fx.GraphModule(probe, traced.graph)
    device = next((p.device for p in probe.parameters()), torch.device("cpu"))
    dtype = next((p.dtype for p in probe.parameters() if p.is_floating_point()), torch.float32)
    try:
        with torch.no_grad(), running():  # a model run: never while another thread traces
            ShapeProp(gm).propagate(torch.zeros(input_size, device=device, dtype=dtype))
    except Exception as exc:  # noqa: BLE001 - ShapeProp wraps the model's own error
        cause = exc.__cause__ or exc
        raise InputError(
            f"{type(model).__name__} could not run on a zero probe input of shape {tuple(input_size)} "
            f"({type(cause).__name__}: {str(cause).strip().splitlines()[0] if str(cause).strip() else ''}); "
            "pass input_size=(N, C, H, W) the model takes (e.g. a batch of 2 for models whose batch norm "
            "is in training mode, or the image size it was built for)"
        ) from exc
    image_size = (int(input_size[-2]), int(input_size[-1]))

    ops = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output", "get_attr")]
    if nodes:
        return [LayerInfo(traced.qualnames[n], _node_kind(n, gm), _node_shape(n), 1, i, image_size)
                for i, n in enumerate(ops)]

    modules = dict(probe.named_modules())
    last_index: dict[str, int] = {}
    calls: dict[str, int] = {}
    for i, node in enumerate(ops):
        qual = traced.qualnames[node]
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
            last_index[node.target] = i
        parts = qual.split(".")
        for depth in range(1, len(parts)):
            last_index[".".join(parts[:depth])] = i
    rows = [
        (idx, LayerInfo(name, type(modules[name]).__name__, _node_shape(ops[idx]), calls.get(name, 1), idx,
                        image_size))
        for name, idx in last_index.items()
        if name in modules and name
    ]
    return [info for _, info in sorted(rows, key=lambda r: r[0])]


def _node_kind(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        return type(gm.get_submodule(str(node.target))).__name__
    return getattr(node.target, "__name__", str(node.target))


def default_layer(model: nn.Module, input_size: tuple[int, int, int, int] = (1, 3, 224, 224)) -> str:
    """The last module, called once, whose output is a spatial ``(N, C, h, w)`` map.

    A heuristic for models without a known default; prefers the shortest name
    among modules that end at the same node (``layer4`` over ``layer4.1``).
    """
    rows = [r for r in list_layers(model, input_size) if r.is_spatial and r.calls == 1]
    if not rows:
        raise LayerShapeError(
            f"{type(model).__name__} has no module with a spatial (N, C, h, w) output for an input of "
            f"{tuple(input_size)}; for a vision transformer pick a token layer yourself and pass "
            "reshape='tokens' (ViT) or 'channels_last' (Swin); `deploycam layers --all` lists every layer"
        )
    same_output = [r for r in rows if r.position == rows[-1].position]
    return min(same_output, key=lambda r: (r.name.count("."), len(r.name))).name
