"""CAM (Zhou et al., 2016), the original class activation map.

Defined for heads that are global average pooling followed by a linear layer:
``M_k = ReLU(sum_c W[k, c] * A_c)``. For such a head ``dS_k/dA_c(i, j) = W[k, c] / (h w)``
at every position, so the class weights are exactly the spatial *sum* of the
gradient; the explainer checks the head's structure before using this method.
"""

from torch import Tensor

from explainer.methods.base import CamMethod, weighted_sum


def cam_weights(activations: Tensor, gradients: Tensor) -> Tensor:
    """``W[k, c] = sum_hw dS_k/dA_c``: ``(N, K, C)``."""
    return gradients.sum(dim=(-2, -1))


def cam(activations: Tensor, gradients: Tensor) -> Tensor:
    """CAM map with weights ``W[k, c] = sum_hw dS_k/dA_c``; shapes as in :mod:`explainer.methods.base`."""
    return weighted_sum(cam_weights(activations, gradients), activations)


METHOD = CamMethod(
    "cam", cam, "classifier weights of a global-average-pool + linear head",
    requires_linear_head=True, weights=cam_weights, order=8,
)
