"""Layer-CAM (Jiang et al., 2021): sum_c ReLU(g_c) * A_c."""

import torch
from torch import Tensor

from explainer.methods.base import CamMethod


def layercam(activations: Tensor, gradients: Tensor) -> Tensor:
    """Layer-CAM map; shapes as in :mod:`explainer.methods.base`."""
    return torch.relu((torch.relu(gradients) * activations.unsqueeze(1)).sum(dim=2))


METHOD = CamMethod("layercam", layercam, "positive gradients as per-pixel weights")
