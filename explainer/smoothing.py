"""``eigen_smooth``: the first principal component of a method's per-channel contributions.

A weight method's map is ``ReLU(sum_c w_c A_c)`` and an element-wise method's is
``ReLU(sum_c contribution_c)``; with ``eigen_smooth`` the channel sum is replaced by
the projection on the first principal component of those ``C`` contributions (as
pytorch-grad-cam's ``eigen_smooth``), which removes much of the noise. The sign is
chosen so the map correlates positively with the mean contribution (the unsmoothed map).
"""

from __future__ import annotations

from torch import Tensor

from explainer.methods import CamMethod
from explainer.methods.eigencam import principal_projection


def contributions(method: CamMethod, activations: Tensor, gradients: Tensor | None = None,
                  weights: Tensor | None = None) -> Tensor | None:
    """Per-channel contributions ``(N, K, C, h, w)``, or None for methods without them (EigenCAM).

    ``weights`` ``(N, K, C)`` are given for perturbation methods, which compute them themselves.
    """
    if weights is None and method.weights is not None:
        weights = method.weights(activations, gradients)
    if weights is not None:
        return weights[:, :, :, None, None] * activations[:, None]
    if method.contributions is not None:
        return method.contributions(activations, gradients)
    return None


def eigen_smooth(contribution: Tensor) -> Tensor:
    """``(N, K, C, h, w)`` contributions -> ``(N, K, h, w)`` maps (ReLU of the first component)."""
    n, k, c, h, w = contribution.shape
    return principal_projection(contribution.reshape(n * k, c, h, w)).reshape(n, k, h, w)
