"""XGrad-CAM (Fu et al., 2020): weight_c = sum_hw(g * A) / (sum_hw(A) + eps)."""

from torch import Tensor

from explainer.methods.base import CamMethod, weighted_sum

EPS = 1e-7


def xgradcam(activations: Tensor, gradients: Tensor, eps: float = EPS) -> Tensor:
    """XGrad-CAM map; shapes as in :mod:`explainer.methods.base`."""
    a = activations.unsqueeze(1)
    a_sum = a.sum(dim=(-2, -1))
    weights = (gradients * a).sum(dim=(-2, -1)) / (a_sum + eps)
    return weighted_sum(weights, activations)


METHOD = CamMethod("xgradcam", xgradcam, "gradient x activation, normalised by the channel's activation sum")
