"""Grad-CAM element-wise (pytorch-grad-cam's GradCAMElementWise): sum_c ReLU(g_c * A_c)."""

import torch
from torch import Tensor

from explainer.methods.base import CamMethod


def elementwise_contributions(activations: Tensor, gradients: Tensor) -> Tensor:
    """ReLU(g_c * A_c) per channel: ``(N, K, C, h, w)``."""
    return torch.relu(gradients * activations.unsqueeze(1))


def gradcam_elementwise(activations: Tensor, gradients: Tensor) -> Tensor:
    """Element-wise Grad-CAM map; shapes as in :mod:`explainer.methods.base`."""
    return torch.relu(elementwise_contributions(activations, gradients).sum(dim=2))


METHOD = CamMethod("gradcam-elementwise", gradcam_elementwise, "ReLU of gradient x activation, summed over channels",
                   contributions=elementwise_contributions, aliases=("gradcamelementwise",), order=4)
