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

from collections.abc import Callable, Sequence

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
    reads = _reads(scores, decoded)
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


def crop_gradients(scores: Tensor, candidates: list[tuple[Tensor, Tensor]], maps: list[Tensor], levels: list[int],
                   radius: int, head: Callable[[list[Tensor]], Tensor]) -> list[Tensor]:
    """``d scores[n, k] / d maps[level][n]`` for each explained level, ``(N, K, C, h, w)``, without a backward
    through the whole head: each anchor a target reads is recomputed by ``head`` from a crop of its level's
    map -- the ``(2r + 1)^2`` window around its cell, shifted inside the map at the borders (where the crop's
    zero padding is the model's) -- and the target's ``d score / d decoded`` at that anchor is backpropagated
    through the crop. Exact: the anchor's output depends on its window only, the same function of it as in
    the whole map, and the Jacobian of a decoded anchor does not depend on where its cell is (the anchor's
    offset is additive).

    Args:
        scores: ``(N, K)`` target scores, differentiable through ``candidates``: per image, the outputs
            ``(outputs, M)`` of the anchors its detections come from (leaves: the head itself ran without
            grad) and those anchors' indices ``(M,)`` in the head's output order (level by level).
        maps: every level's input map ``(N, C_l, h_l, w_l)``; ``levels``: the explained ones (ascending).
        head: ``maps -> decoded`` for any map sizes (a ``Detect`` head: each level's branch reads its own
            map only; the other levels get 1 x 1 maps here).
    """
    n, k = scores.shape
    sizes = [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]
    reads = candidate_reads(scores, [c for c, _ in candidates])  # per image: (K, outputs, M)
    out = {level: maps[level].new_zeros(n, k, *maps[level].shape[1:]) for level in levels}
    items: dict[int, list[tuple[int, int, int, int, int, Tensor]]] = {level: [] for level in levels}
    for i, ((_, anchors), dy_image) in enumerate(zip(candidates, reads)):
        for j in range(k):
            dy = dy_image[j]  # (outputs, M)
            used = torch.nonzero(dy.abs().sum(dim=0)).squeeze(1)
            for m, (level, row, col) in zip(used.tolist(), _cells(anchors[used], sizes)):
                if level not in items:
                    continue  # a level that is not explained (its branch reads no explained map)
                (h, w), (sh, sw) = sizes[level], _crop_size(sizes[level], radius)
                r0, c0 = min(max(row - radius, 0), h - sh), min(max(col - radius, 0), w - sw)
                items[level].append((i, j, r0, c0, (row - r0) * sw + (col - c0), dy[:, m]))
    for level, chosen in items.items():
        if not chosen:
            continue
        sh, sw = _crop_size(sizes[level], radius)
        source = maps[level].detach()
        crops = torch.stack([source[i, :, r0:r0 + sh, c0:c0 + sw] for i, _, r0, c0, _, _ in chosen])
        crops.requires_grad_(True)
        p = len(chosen)
        inputs = [crops if lvl == level else m.new_zeros(p, m.shape[1], 1, 1) for lvl, m in enumerate(maps)]
        with torch.enable_grad():
            y = head(inputs)  # (P, outputs, anchors): the other levels' one anchor each, then this level's crop
        seed = torch.zeros_like(y)
        centres = torch.tensor([level + c for *_, c, _ in chosen], device=y.device)  # levels before: 1 anchor each
        seed[torch.arange(p, device=y.device), :, centres] = torch.stack([t for *_, t in chosen]).to(y)
        (grads,) = torch.autograd.grad(y, crops, grad_outputs=seed)
        for (i, j, r0, c0, _, _), g in zip(chosen, grads):
            out[level][i, j, :, r0:r0 + sh, c0:c0 + sw] += g
    return [out[level] for level in levels]


def _crop_size(size: tuple[int, int], radius: int) -> tuple[int, int]:
    return min(2 * radius + 1, size[0]), min(2 * radius + 1, size[1])


def candidate_reads(scores: Tensor, outputs: list[Tensor]) -> list[Tensor]:
    """What each target reads of each of ``outputs``: ``d scores[:, j].sum() / d outputs[o]`` for every target j.

    Args:
        scores: ``(N, K)`` target scores, differentiable through ``outputs``.
        outputs: tensors the scores were computed from (YOLO: one per image, ``(outputs, M_i)``; R-CNN: the box
            head's ``(R, classes)`` logits and ``(R, 4 * classes)`` regression over all images' RoIs).

    Returns:
        one ``(K, *outputs[o].shape)`` tensor per output, zeros where a score does not read it. One batched
        backward through the few operations after the candidates (K separate ones where an op has no batching rule).
    """
    n, k = scores.shape
    if not scores.requires_grad:
        return [o.new_zeros(k, *o.shape) for o in outputs]
    select = torch.eye(k, dtype=scores.dtype, device=scores.device)[:, None, :].expand(k, n, k)
    try:
        grads = torch.autograd.grad(scores, outputs, grad_outputs=select, is_grads_batched=True, allow_unused=True)
    except RuntimeError:
        per_k = [torch.autograd.grad(scores[:, j].sum(), outputs, retain_graph=j < k - 1, allow_unused=True)
                 for j in range(k)]
        grads = tuple(torch.stack([o.new_zeros(o.shape) if g[i] is None else g[i] for g in per_k])
                      for i, o in enumerate(outputs))
    return [o.new_zeros(k, *o.shape) if g is None else g for g, o in zip(grads, outputs)]


def _reads(scores: Tensor, decoded: Tensor) -> list[Tensor]:
    """What each target reads of the head's output, ``d scores[:, j] / d decoded`` for every j: one batched
    backward through the gathers after the head (K separate ones where an op has no batching rule)."""
    n, k = scores.shape
    select = torch.eye(k, dtype=scores.dtype, device=scores.device)[:, None, :].expand(k, n, k)
    try:
        (batched,) = torch.autograd.grad(scores, decoded, grad_outputs=select, is_grads_batched=True,
                                         retain_graph=True, allow_unused=True)
        if batched is not None:
            return list(batched.unbind(0))
        return [torch.zeros_like(decoded) for _ in range(k)]
    except RuntimeError:
        reads = []
        for j in range(k):
            (dy,) = torch.autograd.grad(scores[:, j].sum(), decoded, retain_graph=True, allow_unused=True)
            reads.append(torch.zeros_like(decoded) if dy is None else dy)
        return reads


def _overlap(a: list[tuple[int, int, int, int, int]], b: list[tuple[int, int, int, int, int]]) -> bool:
    return any(la == lb and r0 < s1 and s0 < r1 and c0 < d1 and d0 < c1
               for la, r0, r1, c0, c1 in a for lb, s0, s1, d0, d1 in b)
