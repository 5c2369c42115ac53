"""XGrad-CAM (Fu et al., 2020): weight_c = sum_hw(g * A) / (sum_hw(A) + eps)."""

from torch import Tensor

from explainer.methods.base import CamMethod, weighted_sum

EPS = 1e-7


def xgradcam_weights(activations: Tensor, gradients: Tensor, eps: float = EPS) -> Tensor:
    """XGrad-CAM channel weights ``(N, K, C)``."""
    a = activations.unsqueeze(1)
    a_sum = a.sum(dim=(-2, -1))
    return (gradients * a).sum(dim=(-2, -1)) / (a_sum + eps)


def xgradcam(activations: Tensor, gradients: Tensor) -> Tensor:
    """XGrad-CAM map; shapes as in :mod:`explainer.methods.base`."""
    return weighted_sum(xgradcam_weights(activations, gradients), activations)


METHOD = CamMethod("xgradcam", xgradcam, "gradient x activation, normalised by the channel's activation sum",
                   weights=xgradcam_weights, order=2)
