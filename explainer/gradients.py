"""Gradients of the target scores with respect to the layer's activations, and nothing else."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from explainer.errors import MethodError

_NOT_DIFFERENTIABLE = ("the head's output does not depend on the activations through autograd; "
                       "gradient methods need a differentiable head (eigencam does not)")


def score_gradients(scores: Tensor, activations: Tensor, hint: str = _NOT_DIFFERENTIABLE) -> Tensor:
    """d scores[n, k] / d activations[n] for scores ``(N, K)`` computed from ``activations`` ``(N, ...)``.

    Returns ``(N, K, *activations.shape[1:])``. Only ``activations`` receives a gradient:
    autograd stops there and never computes parameter gradients (nothing lands in ``.grad``).
    K targets cost one batched backward pass (``is_grads_batched``), not K. Images are
    independent (eval-mode batch norm), so summing over N is exact. Raises
    :class:`MethodError` with ``hint`` when the scores do not depend on the activations.
    """
    if not scores.requires_grad:
        raise MethodError(hint)
    k = scores.shape[1]
    if k == 1:
        (grad,) = torch.autograd.grad(scores.sum(), activations, allow_unused=True)
        if grad is None:
            raise MethodError(hint)
        return grad.unsqueeze(1)
    select = torch.eye(k, dtype=scores.dtype, device=scores.device)[:, None, :].expand(k, *scores.shape)
    (grad,) = torch.autograd.grad(scores, activations, grad_outputs=select, is_grads_batched=True)
    return grad.transpose(0, 1)


def resolve_target(logits: Tensor, target: Optional[Tensor]) -> Tensor:
    """``(N,)`` classes: ``target`` where it is >= 0, each image's argmax where negative or None.

    One convention for every graph (eager, TorchScript, ONNX): a negative target means argmax.
    TorchScript-compatible.
    """
    best = logits.argmax(dim=1)
    if target is None:
        return best
    return torch.where(target < 0, best, target.to(best.dtype))


def one_hot_target(logits: Tensor, target: Optional[Tensor]) -> Tensor:
    """``(N, K)`` in the logits' dtype: 1 at each image's chosen class (:func:`resolve_target`), all 0 for
    an out-of-range target. Every exported graph scores with it. TorchScript-compatible."""
    chosen = resolve_target(logits.detach(), target)
    classes = torch.arange(logits.shape[1], device=logits.device)
    return (classes.unsqueeze(0) == chosen.unsqueeze(1)).to(logits.dtype)


def single_target_gradient(logits: Tensor, activations: Tensor, target: Optional[Tensor]) -> Tensor:
    """d logits[n, target[n]] / d activations as ``(N, 1, C, h, w)``; ``target`` ``(N,)`` long (negative or
    None: argmax).

    The score is a one-hot product (:func:`one_hot_target`), not an index, so a target outside
    ``[0, classes)`` selects nothing and gives a zero gradient (an all-zero map), as in the ONNX graphs.
    TorchScript-compatible: the exported TorchScript graphs call this same function.
    """
    score = (logits * one_hot_target(logits, target)).sum()
    grad = torch.autograd.grad([score], [activations])[0]
    assert grad is not None
    return grad.unsqueeze(1)
