"""Noisy linear imputation (Rong et al., 2022, "A Consistent and Efficient Evaluation Strategy
for Attribution Methods"), the "debias" step of ROAD.

Each removed pixel becomes the weighted mean of its 8 neighbours (weight 1/6 for the four
sharing an edge, 1/12 for the four diagonal ones; neighbours outside the image drop out), with
the removed neighbours themselves unknown: one sparse linear system per image, solved exactly
(SciPy's sparse LU) for all channels at once. Then Gaussian noise of standard deviation
``noise`` is added to the imputed pixels, so the removed region carries no trace of the mask's
shape beyond what the neighbours give. Same scheme and weights as the paper's code and
pytorch-grad-cam's ``NoisyLinearImputer``.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse import csc_matrix
from scipy.sparse.linalg import spsolve
from torch import Tensor

#: (row offset, column offset, weight) of the 8 neighbours.
NEIGHBOURS = ((0, 1, 1 / 6), (0, -1, 1 / 6), (1, 0, 1 / 6), (-1, 0, 1 / 6),
              (1, 1, 1 / 12), (1, -1, 1 / 12), (-1, 1, 1 / 12), (-1, -1, 1 / 12))


def noisy_linear_impute(image: Tensor, removed: Tensor, noise: float = 0.01,
                        generator: torch.Generator | None = None) -> Tensor:
    """``image`` ``(C, H, W)`` with the pixels where ``removed`` ``(H, W)`` is True imputed.

    For each removed pixel p: ``sum_q w_q (x_p - x_q) = 0`` over its in-image neighbours q.
    Returns a new float tensor on the image's device; the kept pixels are unchanged.
    """
    c, h, w = image.shape
    mask = removed.detach().cpu().numpy().astype(bool)
    unknown = np.flatnonzero(mask)
    out = image.detach().clone()
    if unknown.size == 0:
        return out
    values = image.detach().cpu().double().numpy().reshape(c, h * w)
    index_of = np.full(h * w, -1)
    index_of[unknown] = np.arange(unknown.size)
    rows, cols = np.divmod(unknown, w)
    diagonal = np.zeros(unknown.size)
    rhs = np.zeros((unknown.size, c))
    a_rows, a_cols, a_vals = [], [], []
    for dr, dc, weight in NEIGHBOURS:
        r, k = rows + dr, cols + dc
        inside = (r >= 0) & (r < h) & (k >= 0) & (k < w)
        diagonal[inside] += weight
        q = (r * w + k)[inside]
        p = np.flatnonzero(inside)
        known = ~mask.reshape(-1)[q]
        rhs[p[known]] += weight * values[:, q[known]].T
        a_rows.append(p[~known])
        a_cols.append(index_of[q[~known]])
        a_vals.append(np.full(int((~known).sum()), -weight))
    a_rows.append(np.arange(unknown.size))
    a_cols.append(np.arange(unknown.size))
    a_vals.append(diagonal)
    system = csc_matrix((np.concatenate(a_vals), (np.concatenate(a_rows), np.concatenate(a_cols))),
                        shape=(unknown.size, unknown.size))
    solved = spsolve(system, rhs).reshape(unknown.size, c)
    filled = torch.from_numpy(solved.T.copy()).to(out)
    if noise:
        filled = filled + noise * torch.randn(filled.shape, generator=generator).to(out)
    out.reshape(c, h * w)[:, torch.from_numpy(unknown).to(out.device)] = filled
    return out
