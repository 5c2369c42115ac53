"""Grad-CAM (Selvaraju et al., 2017): channel weights are the spatial mean of the gradient."""

from torch import Tensor

from explainer.methods.base import CamMethod, weighted_sum


def gradcam_weights(activations: Tensor, gradients: Tensor) -> Tensor:
    """w_c = mean_hw(dS/dA_c): ``(N, K, C)``."""
    return gradients.mean(dim=(-2, -1))


def gradcam(activations: Tensor, gradients: Tensor) -> Tensor:
    """ReLU(sum_c mean_hw(dS/dA_c) * A_c); shapes as in :mod:`explainer.methods.base`."""
    return weighted_sum(gradcam_weights(activations, gradients), activations)


METHOD = CamMethod("gradcam", gradcam, "channel weight = mean gradient over space", weights=gradcam_weights, order=0)
