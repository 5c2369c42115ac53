"""K detections' gradients from few backwards, for dense heads whose outputs are per-anchor and local.

A YOLO detection's score reads one anchor's outputs (its class probability, and for a reference box its
decoded box): a cell of one level. The head computes each cell from a ``(2r + 1)^2`` window of its input
map (``r``: the receptive radius of the head's convolution branches, all stride 1), so ``d score / d map``
is zero outside the windows of the anchors the score reads, and zero at the other levels. Gradients of
targets whose windows do not intersect can be read from *one* backward of their sum, each masked to its
own windows: exactly, not approximately. :func:`split_gradients` does that in rounds -- each round a set of
targets with pairwise disjoint windows, greedily packed -- so K boxes cost a few head backwards instead of
K (3 for YOLOv8n's 10 best boxes on chelsea at 640 px, measured), plus K backwards through the score alone (the gathers after the head, a few
hundred numbers).

Where the head has a module whose locality is unknown, :func:`receptive_radius` says None and the caller
uses one backward per target instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

#: modules that keep each output cell a function of the same cell of their input
POINTWISE = (nn.BatchNorm2d, nn.SiLU, nn.ReLU, nn.Identity, nn.Hardswish, nn.LeakyReLU, nn.Sigmoid, nn.GELU)


def receptive_radius(branches: Sequence[nn.Module]) -> int | None:
    """The largest receptive radius (cells) of sequential conv branches: the sum of their stride-1
    convolutions' ``dilation * (kernel - 1) / 2``; None if a branch holds anything else."""
    radius = 0
    for branch in branches:
        r = 0
        for module in branch.modules():
            if len(list(module.children())):
                continue  # a container: its leaves are checked
            if isinstance(module, nn.Conv2d):
                if module.stride != (1, 1) or any(k % 2 == 0 for k in module.kernel_size):
                    return None
                r += max(d * (k - 1) // 2 for d, k in zip(module.dilation, module.kernel_size))
            elif not isinstance(module, POINTWISE):
                return None
        radius = max(radius, r)
    return radius


def _cells(anchors: Tensor, sizes: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """Anchor indices (the head's output order: level by level, row-major) -> ``(level, row, col)``."""
    starts = [0]
    for h, w in sizes:
        starts.append(starts[-1] + h * w)
    cells = []
    for a in anchors.tolist():
        level = max(i for i in range(len(sizes)) if starts[i] <= a)
        row, col = divmod(a - starts[level], sizes[level][1])
        cells.append((level, row, col))
    return cells


def split_gradients(scores: Tensor, decoded: Tensor, leaves: list[Tensor], levels: list[int],
                    sizes: list[tuple[int, int]], radius: int) -> list[Tensor]:
    """``d scores[n, k] / d leaf[n]`` for every leaf, each ``(N, K, C, h, w)``, from as few head backwards as
    the targets' windows allow (module docstring).

    Args:
        scores: ``(N, K)`` target scores, differentiable through ``decoded``.
        decoded: the head's output ``(N, outputs, anchors)`` the scores read (anchors level by level).
        leaves: the explained levels' input maps (grad-requiring), ``levels`` their indices into ``sizes``
            (every level's ``(h, w)``, the order of the anchors).
        radius: the head's receptive radius (:func:`receptive_radius`).
    """
    n, k = scores.shape
    # what each target reads of the head's output: K cheap backwards through the gathers after the head
    reads = []
    for j in range(k):
        (dy,) = torch.autograd.grad(scores[:, j].sum(), decoded, retain_graph=True, allow_unused=True)
        reads.append(torch.zeros_like(decoded) if dy is None else dy)
    # windows of each (image, target): per level, the boxes [r0, r1) x [c0, c1) around the cells it reads
    windows: dict[tuple[int, int], list[tuple[int, int, int, int, int]]] = {}
    for j, dy in enumerate(reads):
        for i in range(n):
            used = torch.nonzero(dy[i].abs().sum(dim=0)).squeeze(1)
            windows[(i, j)] = [(lvl, max(0, r - radius), min(sizes[lvl][0], r + radius + 1),
                                max(0, c - radius), min(sizes[lvl][1], c + radius + 1))
                               for lvl, r, c in _cells(used, sizes)]
    rounds: list[list[tuple[int, int]]] = []
    for member in windows:
        for group in rounds:
            if not any(_overlap(windows[member], windows[other]) for other in group if other[0] == member[0]):
                group.append(member)
                break
        else:
            rounds.append([member])
    out = [leaf.new_zeros(n, k, *leaf.shape[1:]) for leaf in leaves]
    for r, group in enumerate(rounds):
        seed = torch.zeros_like(decoded)  # the round's targets, each on its own image's row
        for i, j in group:
            seed[i] += reads[j][i]
        grads = torch.autograd.grad(decoded, leaves, grad_outputs=seed, retain_graph=r < len(rounds) - 1,
                                    allow_unused=True)
        for position, (leaf_grad, level) in enumerate(zip(grads, levels)):
            if leaf_grad is None:
                continue
            for i, j in group:
                for lvl, r0, r1, c0, c1 in windows[(i, j)]:
                    if lvl == level:
                        out[position][i, j, :, r0:r1, c0:c1] = leaf_grad[i, :, r0:r1, c0:c1]
    return out


def _overlap(a: list[tuple[int, int, int, int, int]], b: list[tuple[int, int, int, int, int]]) -> bool:
    return any(la == lb and r0 < s1 and s0 < r1 and c0 < d1 and d0 < c1
               for la, r0, r1, c0, c1 in a for lb, s0, s1, d0, d1 in b)
