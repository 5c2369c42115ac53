"""The first principal component of feature maps, without an SVD (shared by Eigen-CAM,
Eigen-Grad-CAM and ``eigen_smooth``).

For each image the features ``(C, h, w)`` are viewed as ``hw`` samples of ``C`` features,
centred, and projected on their first right singular vector, with the sign that makes the
projection correlate positively with the mean over channels; then ReLU.

The singular vector is computed without an SVD, so that the same function exports to ONNX
(which has no SVD or eigen-decomposition operator): it is the top eigenvector of the smaller
Gram matrix ``M M^T`` (``hw x hw``) or ``M^T M`` (``C x C``) of the centred matrix ``M``,
found by repeated squaring. After ``k`` squarings (each renormalised by its trace) the
matrix is ``G^(2^k) / trace``, in which every other eigen-direction is damped by
``(lambda_2 / lambda_1)^(2^k)``; with ``k = 24`` that is below float32 resolution unless the
top two singular values agree to about 1e-7 relative -- where the principal component is
ill-defined and an SVD's answer is arbitrary too. The eigenvector is the largest column of
the converged matrix. Cost: 24 batched ``d x d`` products, ``d = min(hw, C)``.
"""

import torch
from torch import Tensor


def top_eigenvector(gram: Tensor, squarings: int = 24) -> Tensor:
    """Unit eigenvector of the largest eigenvalue of symmetric PSD matrices ``(N, d, d)``: ``(N, d)``.

    All zeros for a zero matrix. Computed by ``squarings`` repeated squarings (a power iteration
    of ``2**squarings`` steps; see the module doc).
    """
    tiny = 1e-30
    m = gram / torch.diagonal(gram, dim1=-2, dim2=-1).sum(dim=-1)[:, None, None].clamp_min(tiny)
    for _ in range(squarings):
        m = torch.matmul(m, m)
        m = m / torch.diagonal(m, dim1=-2, dim2=-1).sum(dim=-1)[:, None, None].clamp_min(tiny)
    best = torch.diagonal(m, dim1=-2, dim2=-1).argmax(dim=1)  # the column where v v^T is largest
    column = torch.gather(m, 2, best[:, None, None].expand(m.shape[0], m.shape[1], 1))[:, :, 0]
    return column / torch.linalg.vector_norm(column, dim=1, keepdim=True).clamp_min(tiny)


def principal_projection(features: Tensor) -> Tensor:
    """Project ``(N, C, h, w)`` features on their first principal component; returns ``(N, 1, h, w)``.

    Sign: positive correlation of the projection with ``features.mean(channels)``.
    """
    n, c, h, w = features.shape
    dtype = features.dtype
    work = features if dtype == torch.float64 else features.float()  # half-precision models: float32 inside
    samples = work.reshape(n, c, h * w).transpose(1, 2)  # (N, hw, C)
    centred = samples - samples.mean(dim=1, keepdim=True)
    if h * w <= c:
        u = top_eigenvector(torch.matmul(centred, centred.transpose(1, 2)))  # (N, hw): left singular vector
        v = torch.matmul(centred.transpose(1, 2), u[:, :, None])[:, :, 0]  # M^T u = sigma_1 v
        v = v / torch.linalg.vector_norm(v, dim=1, keepdim=True).clamp_min(1e-30)
    else:
        v = top_eigenvector(torch.matmul(centred.transpose(1, 2), centred))  # (N, C): right singular vector
    projection = torch.matmul(centred, v[:, :, None])[:, :, 0]  # (N, hw)
    reference = samples.mean(dim=2)
    covariance = ((projection - projection.mean(dim=1, keepdim=True))
                  * (reference - reference.mean(dim=1, keepdim=True))).sum(dim=1, keepdim=True)
    sign = torch.where(covariance < 0, -torch.ones_like(covariance), torch.ones_like(covariance))
    return torch.relu(projection * sign).reshape(n, 1, h, w).to(dtype)
