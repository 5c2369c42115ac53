"""Grad-CAM++ (Chattopadhay et al., 2018), in pytorch-grad-cam's closed form.

alpha = g^2 / (2 g^2 + sum_hw(A) g^3 + eps), set to 0 where g == 0;
weight_c = sum_hw(alpha * ReLU(g)).
"""

import torch
from torch import Tensor

from explainer.methods.base import CamMethod, weighted_sum

EPS = 1e-6


def gradcam_plus_plus_weights(activations: Tensor, gradients: Tensor, eps: float = EPS) -> Tensor:
    """Grad-CAM++ channel weights ``(N, K, C)``."""
    g2 = gradients.pow(2)
    g3 = gradients.pow(3)
    a_sum = activations.sum(dim=(-2, -1), keepdim=True).unsqueeze(1)  # (N, 1, C, 1, 1)
    alpha = g2 / (2 * g2 + a_sum * g3 + eps)
    alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
    return (torch.relu(gradients) * alpha).sum(dim=(-2, -1))


def gradcam_plus_plus(activations: Tensor, gradients: Tensor) -> Tensor:
    """Grad-CAM++ map; shapes as in :mod:`explainer.methods.base`."""
    return weighted_sum(gradcam_plus_plus_weights(activations, gradients), activations)


METHOD = CamMethod("gradcam++", gradcam_plus_plus, "second-order weighting of positive gradients",
                   weights=gradcam_plus_plus_weights, aliases=("gradcampp", "gradcam-plus-plus"), order=1)
