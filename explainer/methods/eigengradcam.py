"""Eigen-Grad-CAM (pytorch-grad-cam): the first principal component of gradient x activation."""

from torch import Tensor

from explainer.methods.base import CamMethod
from explainer.principal import principal_projection


def eigengradcam(activations: Tensor, gradients: Tensor) -> Tensor:
    """Eigen-Grad-CAM map; shapes as in :mod:`explainer.methods.base`."""
    n, k, c, h, w = gradients.shape
    product = (gradients * activations.unsqueeze(1)).reshape(n * k, c, h, w)
    return principal_projection(product).reshape(n, k, h, w)


METHOD = CamMethod("eigengradcam", eigengradcam, "first principal component of gradient x activation", order=7)
