"""HiResCAM (Draelos & Carin, 2020): ReLU(sum_c g_c * A_c), element-wise, no spatial pooling."""

import torch
from torch import Tensor

from explainer.methods.base import CamMethod


def hirescam_contributions(activations: Tensor, gradients: Tensor) -> Tensor:
    """g_c * A_c per channel: ``(N, K, C, h, w)``."""
    return gradients * activations.unsqueeze(1)


def hirescam(activations: Tensor, gradients: Tensor) -> Tensor:
    """HiResCAM map; shapes as in :mod:`explainer.methods.base`."""
    return torch.relu(hirescam_contributions(activations, gradients).sum(dim=2))


METHOD = CamMethod("hirescam", hirescam, "element-wise gradient x activation, summed over channels",
                   contributions=hirescam_contributions, order=3)
