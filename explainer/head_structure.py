"""Recognise heads that are global average pooling followed by one linear layer.

CAM is only defined for such heads, and for them the gradient of class ``k`` with
respect to the activations is the constant ``W[k, c] / (h w)`` (the ONNX export
uses this shortcut instead of tracing the head's gradient).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

_SHAPE_METHODS = {"view", "reshape", "flatten", "squeeze", "contiguous", "size", "clone"}
_SHAPE_FUNCTIONS = {torch.flatten, torch.squeeze, torch.reshape, F.dropout, operator.getitem}
_PASS_MODULES = (nn.Flatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity)


@dataclass(frozen=True)
class LinearHead:
    """The classifier of a pooling + linear head: ``logits = mean_hw(A) @ weight.T + bias``."""

    weight: torch.Tensor  # (num_classes, C)
    bias: torch.Tensor | None  # (num_classes,)


def is_adaptive_global_pool(node: fx.Node, gm: fx.GraphModule) -> bool:
    """True for an ``nn.AdaptiveAvgPool2d(1)`` call or ``F.adaptive_avg_pool2d(x, 1)`` node of ``gm``."""
    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        return isinstance(mod, nn.AdaptiveAvgPool2d) and mod.output_size in (1, (1, 1))
    if node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return size in (1, (1, 1), [1, 1])
    return False


def _is_global_pool(node: fx.Node, gm: fx.GraphModule) -> bool:
    """:func:`is_adaptive_global_pool`, or a spatial ``mean`` over the last two axes."""
    if is_adaptive_global_pool(node, gm):
        return True
    if node.op in ("call_method", "call_function") and (node.target == "mean" or node.target is torch.mean):
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return tuple(dim) in ((2, 3), (-2, -1), (3, 2), (-1, -2)) if isinstance(dim, (tuple, list)) else False
    return False


def find_linear_head(head: fx.GraphModule) -> tuple[LinearHead | None, str]:
    """``(LinearHead, "")`` when the head is global average pooling + one linear layer, else ``(None, reason)``.

    Allowed between the two: flatten/view/reshape/squeeze, dropout, identity.
    """
    pooled, linear, linear_node = False, None, None
    for node in head.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        if linear_node is not None and node.op != "output":
            return None, f"the head applies {node.format_node()} after its linear layer"
        if _is_global_pool(node, head):
            if pooled:
                return None, "the head pools twice"
            pooled = True
            continue
        if node.op == "call_module":
            mod = head.get_submodule(str(node.target))
            if isinstance(mod, nn.Linear) and pooled:
                linear, linear_node = mod, node
                continue
            if isinstance(mod, _PASS_MODULES):
                continue
            return None, f"the head applies {type(mod).__name__} ({node.target})" + ("" if pooled else " before pooling")
        if node.op == "call_method" and node.target in _SHAPE_METHODS:
            continue
        if node.op == "call_function" and node.target in _SHAPE_FUNCTIONS:
            continue
        if node.op == "call_function" and node.target is F.linear and pooled:
            return None, "the head calls F.linear directly; CAM needs an nn.Linear classifier"
        return None, f"the head applies {getattr(node.target, '__name__', node.target)}"
    if linear is None:
        return None, "the head has no linear classifier after a global average pooling"
    return LinearHead(linear.weight, linear.bias), ""
