"""Grad-CAM (Selvaraju et al., 2017): channel weights are the spatial mean of the gradient."""

from torch import Tensor

from explainer.methods.base import CamMethod, weighted_sum


def gradcam(activations: Tensor, gradients: Tensor) -> Tensor:
    """ReLU(sum_c mean_hw(dS/dA_c) * A_c); shapes as in :mod:`explainer.methods.base`."""
    return weighted_sum(gradients.mean(dim=(-2, -1)), activations)


METHOD = CamMethod("gradcam", gradcam, "channel weight = mean gradient over space")
