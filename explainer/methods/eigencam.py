"""Eigen-CAM (Muhammad & Yeasin, 2020): the first principal component of the activations.

For each image the activations are viewed as ``hw`` samples of ``C`` features,
centred (the mean over positions is removed), and projected on their first right
singular vector. A singular vector's sign is arbitrary; it is chosen so that the
projection correlates positively with the mean over channels of the projected
matrix (for Eigen-CAM: the mean activation). Then ReLU, as for every method.
Where that mean is constant -- a LayerNorm output, as in vision transformers, has zero
channel mean at every token -- the sign has nothing to go on and is arbitrary.

The component is computed without an SVD, so the same function exports to ONNX: see
:mod:`explainer.principal`.
"""

from torch import Tensor

from explainer.methods.base import CamMethod
from explainer.principal import principal_projection


def eigencam(activations: Tensor, gradients: Tensor) -> Tensor:
    """Eigen-CAM map ``(N, 1, h, w)``, the same for every class; ``gradients`` is unused."""
    return principal_projection(activations)


METHOD = CamMethod(
    "eigencam", eigencam, "first principal component of the activations (class-agnostic, no gradient)",
    needs_gradient=False, order=6,
)
