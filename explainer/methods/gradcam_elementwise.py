"""Grad-CAM element-wise (pytorch-grad-cam's GradCAMElementWise): sum_c ReLU(g_c * A_c)."""

import torch
from torch import Tensor

from explainer.methods.base import CamMethod


def gradcam_elementwise(activations: Tensor, gradients: Tensor) -> Tensor:
    """Element-wise Grad-CAM map; shapes as in :mod:`explainer.methods.base`."""
    return torch.relu(torch.relu(gradients * activations.unsqueeze(1)).sum(dim=2))


METHOD = CamMethod("gradcam-elementwise", gradcam_elementwise, "ReLU of gradient x activation, summed over channels")
