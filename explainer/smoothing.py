"""Smoothing: ``eigen_smooth`` (the first principal component of a method's per-channel
contributions) and ``aug_smooth`` (the mean over flipped and brightened copies).

A weight method's map is ``ReLU(sum_c w_c A_c)`` and an element-wise method's is
``ReLU(sum_c contribution_c)``; with ``eigen_smooth`` the channel sum is replaced by
the projection on the first principal component of those ``C`` contributions (as
pytorch-grad-cam's ``eigen_smooth``), which removes much of the noise. The sign is
chosen so the map correlates positively with the mean contribution (the unsmoothed map).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from explainer.methods import CamMethod
from explainer.principal import principal_projection


def contributions(method: CamMethod, activations: Tensor, gradients: Tensor,
                  weights: Tensor | None = None) -> Tensor | None:
    """Per-channel contributions ``(N, K, C, h, w)``, or None for methods without them (EigenCAM).

    ``gradients`` ``(N, K, C, h, w)`` (empty for methods without); ``weights`` ``(N, K, C)`` are given
    for perturbation methods, which compute them themselves.
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


#: aug_smooth's augmentations besides the identity: (horizontal flip, intensity factor), as pytorch-grad-cam.
AUGMENTATIONS = ((False, 0.9), (False, 1.1), (True, 0.9), (True, 1.0), (True, 1.1))


def aug_smooth(maps: Callable[[Tensor, bool], tuple[Tensor, Tensor]], x: Tensor, raw: Tensor,
               cams: Tensor) -> tuple[Tensor, Tensor]:
    """The mean of ``(raw, cams)`` over the identity and :data:`AUGMENTATIONS`, each mapped back.

    ``maps(images, flipped) -> (raw (N, K, h, w), cams (N, K, H, W))`` explains augmented images
    (``flipped`` says to flip spatial targets with them); ``raw``, ``cams`` are the original's.
    """
    raws, all_cams = [raw], [cams]
    for flip, factor in AUGMENTATIONS:
        augmented = x * factor
        r, c = maps(augmented.flip(-1) if flip else augmented, flip)
        raws.append(r.flip(-1) if flip else r)
        all_cams.append(c.flip(-1) if flip else c)
    return torch.stack(raws).mean(0), torch.stack(all_cams).mean(0)
