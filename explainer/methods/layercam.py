"""Layer-CAM (Jiang et al., 2021): sum_c ReLU(g_c) * A_c."""

import torch
from torch import Tensor

from explainer.methods.base import CamMethod


def layercam_contributions(activations: Tensor, gradients: Tensor) -> Tensor:
    """ReLU(g_c) * A_c per channel: ``(N, K, C, h, w)``."""
    return torch.relu(gradients) * activations.unsqueeze(1)


def layercam(activations: Tensor, gradients: Tensor) -> Tensor:
    """Layer-CAM map; shapes as in :mod:`explainer.methods.base`."""
    return torch.relu(layercam_contributions(activations, gradients).sum(dim=2))


METHOD = CamMethod("layercam", layercam, "positive gradients as per-pixel weights",
                   contributions=layercam_contributions, order=5)
