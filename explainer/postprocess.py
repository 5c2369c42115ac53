"""Normalise raw maps and upsample them to the input size (shared by eager and exported graphs)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

#: Added to the (max - min) range so an all-constant map becomes 0, never NaN.
NORM_EPS = 1e-7


def normalize_maps(raw: Tensor, eps: float = NORM_EPS) -> Tensor:
    """Min-max normalise each map over its last two axes: ``(m - min) / (max - min + 1e-7)``.

    ``raw``: ``(..., h, w)``; returns the same shape, values in [0, 1].
    """
    lo = raw.amin(dim=(-2, -1), keepdim=True)
    hi = raw.amax(dim=(-2, -1), keepdim=True)
    return (raw - lo) / (hi - lo + eps)


def upsample_maps(maps: Tensor, height: int, width: int) -> Tensor:
    """Bilinear (align_corners=False) resize of ``(N, K, h, w)`` maps to ``(N, K, height, width)``."""
    return F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False)
