"""Independent float64 oracle for the tests.

Activations and gradients come from the *whole* model run in float64 with a
forward hook on the target module (hooks are fine here, in the tests, and
nowhere in the product), and every CAM formula is restated plainly in NumPy.
"""

from __future__ import annotations

import copy

import numpy as np
import torch


def _hooked_float64_run(model, layer: str, x: torch.Tensor):
    """Run a float64 copy of ``model`` on ``x``; ``(leaf, output)`` with ``leaf`` the layer's output as a
    grad-requiring leaf the rest of the model reads."""
    m = copy.deepcopy(model).double().eval()
    module = dict(m.named_modules())[layer]
    store = {}

    def keep(_module, _inputs, output):
        leaf = output.detach().clone().requires_grad_(True)
        store["A"] = leaf
        return leaf * 1.0  # later in-place ops (DenseNet's ReLU) must not touch the leaf

    handle = module.register_forward_hook(keep)
    try:
        output = m(x.double())
    finally:
        handle.remove()
    return store["A"], output


def activations_and_gradients(model, layer: str, x: torch.Tensor, targets: list[int]):
    """A (N, C, h, w), G = d logit[target] / dA (N, C, h, w), logits (N, K): float64 NumPy."""
    leaf, logits = _hooked_float64_run(model, layer, x)
    score = logits[torch.arange(len(targets)), torch.tensor(targets)].sum()
    (grad,) = torch.autograd.grad(score, leaf)
    return leaf.detach().numpy(), grad.numpy(), logits.detach().numpy()


def activations_and_score_gradients(model, layer: str, x: torch.Tensor, score, to_grid=None):
    """Like :func:`activations_and_gradients` for any score ``score(output) -> (N,)`` (float64 torch),
    with the layer output laid out as (N, C, h, w) by ``to_grid`` (NumPy) when it is not one already."""
    leaf, output = _hooked_float64_run(model, layer, x)
    (grad,) = torch.autograd.grad(score(output).sum(), leaf)
    A, G = leaf.detach().numpy(), grad.numpy()
    return (A, G) if to_grid is None else (to_grid(A), to_grid(G))


def vit_tokens_to_grid(T, prefix: int = 1):
    """(N, prefix + h*w, C) -> (N, C, h, w) for a square grid."""
    n, t, c = T.shape
    side = int(round((t - prefix) ** 0.5))
    return T[:, prefix:, :].reshape(n, side, side, c).transpose(0, 3, 1, 2)


def channels_last_to_grid(T):
    """(N, h, w, C) -> (N, C, h, w)."""
    return T.transpose(0, 3, 1, 2)


def relu(a):
    return np.maximum(a, 0.0)


def weighted(w, A):
    """relu(sum_c w[n, c] A[n, c])"""
    return relu((w[:, :, None, None] * A).sum(axis=1))


def gradcam(A, G):
    return weighted(G.mean(axis=(2, 3)), A)


def gradcam_pp_weights(A, G):
    g2, g3 = G**2, G**3
    sum_a = A.sum(axis=(2, 3))[:, :, None, None]
    alpha = g2 / (2 * g2 + sum_a * g3 + 1e-6)
    alpha = np.where(G != 0, alpha, 0.0)
    return (relu(G) * alpha).sum(axis=(2, 3))


def gradcam_pp(A, G):
    return weighted(gradcam_pp_weights(A, G), A)


def xgradcam(A, G):
    w = (G * A).sum(axis=(2, 3)) / (A.sum(axis=(2, 3)) + 1e-7)
    return weighted(w, A)


def hirescam(A, G):
    return relu((G * A).sum(axis=1))


def gradcam_elementwise(A, G):
    return relu(relu(G * A).sum(axis=1))


def layercam(A, G):
    return relu((relu(G) * A).sum(axis=1))


def first_component(F):
    """Per image: centred (hw, C) matrix projected on VT[0] (full SVD), sign so it correlates with the channel mean."""
    out = []
    for f in F:
        c, h, w = f.shape
        M = f.reshape(c, h * w).T
        M = M - M.mean(axis=0)
        _, _, vt = np.linalg.svd(M, full_matrices=True)
        p = M @ vt[0]
        ref = f.reshape(c, h * w).mean(axis=0)
        if np.sum((p - p.mean()) * (ref - ref.mean())) < 0:
            p = -p
        out.append(relu(p).reshape(h, w))
    return np.stack(out)


def eigencam(A, G):
    return first_component(A)


def eigengradcam(A, G):
    return first_component(G * A)


def cam(A, W, targets):
    """relu(sum_c W[target, c] A_c) for a pooling + linear head with weight W (num_classes, C)."""
    return weighted(W[targets], A)


#: Each one-graph method's map ``(A, G) -> (N, K, h, w)``, by registry name. A method added to
#: explainer/methods/ without its formula here fails test_every_method_has_a_reference_formula.
FORMULAS = {
    "gradcam": gradcam,
    "gradcam++": gradcam_pp,
    "xgradcam": xgradcam,
    "hirescam": hirescam,
    "gradcam-elementwise": gradcam_elementwise,
    "layercam": layercam,
    "eigencam": eigencam,
    "eigengradcam": eigengradcam,
}

#: Per-channel contributions ``(N, C, h, w)`` whose channel sum is the map before its ReLU, for the
#: methods that have them (``eigen_smooth`` projects these on their first principal component).
CONTRIBUTIONS = {
    "gradcam": lambda A, G: G.mean(axis=(2, 3))[:, :, None, None] * A,
    "gradcam++": lambda A, G: gradcam_pp_weights(A, G)[:, :, None, None] * A,
    "xgradcam": lambda A, G: ((G * A).sum(axis=(2, 3)) / (A.sum(axis=(2, 3)) + 1e-7))[:, :, None, None] * A,
    "hirescam": lambda A, G: G * A,
    "gradcam-elementwise": lambda A, G: relu(G * A),
    "layercam": lambda A, G: relu(G) * A,
}
