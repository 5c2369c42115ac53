"""Eigen-CAM (Muhammad & Yeasin, 2020): the first principal component of the activations.

For each image the activations are viewed as ``hw`` samples of ``C`` features,
centred (the mean over positions is removed), and projected on their first right
singular vector. A singular vector's sign is arbitrary; it is chosen so that the
projection correlates positively with the mean over channels of the projected
matrix (for Eigen-CAM: the mean activation). Then ReLU, as for every method.
Where that mean is constant -- a LayerNorm output, as in vision transformers, has zero
channel mean at every token -- the sign has nothing to go on and is that of the SVD.
"""

import torch
from torch import Tensor

from explainer.methods.base import CamMethod


def principal_projection(features: Tensor) -> Tensor:
    """Project ``(N, C, h, w)`` features on their first principal component; returns ``(N, 1, h, w)``.

    Sign: positive correlation of the projection with ``features.mean(channels)``.
    """
    n, c, h, w = features.shape
    samples = features.reshape(n, c, h * w).transpose(1, 2)  # (N, hw, C)
    centred = samples - samples.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    projection = torch.einsum("npc,nc->np", centred, vh[:, 0, :])  # (N, hw)
    reference = samples.mean(dim=2)
    covariance = ((projection - projection.mean(dim=1, keepdim=True))
                  * (reference - reference.mean(dim=1, keepdim=True))).sum(dim=1, keepdim=True)
    sign = torch.where(covariance < 0, -torch.ones_like(covariance), torch.ones_like(covariance))
    return torch.relu(projection * sign).reshape(n, 1, h, w)


def eigencam(activations: Tensor, gradients: Tensor) -> Tensor:
    """Eigen-CAM map ``(N, 1, h, w)``, the same for every class; ``gradients`` is unused."""
    return principal_projection(activations)


METHOD = CamMethod(
    "eigencam", eigencam, "first principal component of the activations (class-agnostic, no gradient)",
    needs_gradient=False, class_specific=False, uses_svd=True,
)
