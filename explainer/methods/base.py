"""What a CAM method is, and the weighted-sum step most of them share.

A method maps the target layer's activations and the gradients of the target
scores with respect to them to one raw map per image and target:

    activations: (N, C, h, w)
    gradients:   (N, K, C, h, w)  -- K target classes per image; an empty tensor
                                     for methods with ``needs_gradient=False``
    returns:     (N, K, h, w)     -- or (N, 1, h, w) for class-agnostic methods

Every function is plain tensor code (no Python branching on values), so the
export issue can trace it with TorchScript or make_fx unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

CamFunction = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class CamMethod:
    """A registered CAM method.

    Attributes:
        name: the registry key (``"gradcam"``).
        compute: ``(activations (N, C, h, w), gradients (N, K, C, h, w)) -> (N, K, h, w)``.
        needs_gradient: False for methods that only read activations (EigenCAM).
        class_specific: False when the map is the same for every class.
        requires_linear_head: True when the method is only defined for heads that
            are global average pooling followed by a linear layer (CAM).
        uses_svd: True when the map needs a singular value decomposition (no ONNX operator exists
            for it, so such methods export to TorchScript only).
        summary: one line for help texts.
    """

    name: str
    compute: CamFunction
    summary: str
    needs_gradient: bool = True
    class_specific: bool = True
    requires_linear_head: bool = False
    uses_svd: bool = False


def weighted_sum(channel_weights: Tensor, activations: Tensor) -> Tensor:
    """ReLU(sum_c w[n, k, c] * A[n, c]) for weights ``(N, K, C)`` and activations ``(N, C, h, w)``.

    Returns ``(N, K, h, w)``.
    """
    return torch.relu(torch.einsum("nkc,nchw->nkhw", channel_weights, activations))
