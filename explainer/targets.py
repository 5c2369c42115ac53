"""Targets beyond a class index: callables that turn the model's output into one score per image.

A target callable takes the model's (selected) output for a batch, ``(B, ...)``, and returns
``(B,)`` scores; the explanation is of that score. Ready ones:

* :class:`ClassTarget` -- ``output[:, k]`` for classifier logits ``(B, num_classes)``.
* :class:`SegmentationTarget` -- the class-``k`` logits summed over a mask, for segmentation
  outputs ``(B, classes, H, W)`` (torchvision ``deeplabv3_*`` / ``fcn_*``, whose output dict's
  ``"out"`` entry the explainer selects).
* :class:`SimilarityTarget` -- cosine similarity to a reference embedding, for retrieval and
  re-identification models whose output is an embedding ``(B, D)``.

Perturbation methods run batches of perturbed copies of one image, so a target that holds
per-image data (a mask or class per image) must know which image each output row belongs to:
:meth:`Target.for_rows` returns the target for rows of given image indices. A plain function
passed as a target is assumed to hold no per-image data (it is wrapped in
:class:`FunctionTarget`). ``aug_smooth`` flips images; :meth:`Target.flipped` flips spatial
targets (the segmentation mask) to match.

A list of N callables, one per image, follows pytorch-grad-cam's convention (each gets its
image's output *without* the batch axis and returns a scalar), so its target classes work
unchanged (see :class:`PerImageTargets`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from explainer.errors import TargetError


class Target:
    """Base class: ``target(output (B, ...)) -> scores (B,)``; override :meth:`for_rows` / :meth:`flipped`
    when the target holds per-image or spatial data."""

    def __call__(self, output: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def for_rows(self, rows: Tensor) -> Target:
        """The target for output rows that belong to images ``rows`` ``(B,)`` (long); default: itself."""
        return self

    def flipped(self) -> Target:
        """The target for horizontally flipped images (``aug_smooth``); default: itself."""
        return self

    @property
    def class_index(self) -> Tensor | None:
        """``(N,)`` class indices when the target is a class, else None (``Explanation.targets`` then holds -1)."""
        return None


def _as_tensor(value, what: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError) as exc:
        raise TargetError(f"{what} could not be read as a tensor: {exc}") from exc


class ClassTarget(Target):
    """The logit of class ``k`` (an int for every image, or N ints / a ``(N,)`` tensor, one per image)."""

    def __init__(self, k: int | Sequence[int] | Tensor) -> None:
        index = _as_tensor(k, "ClassTarget's class")
        if index.dtype.is_floating_point or index.dtype == torch.bool or index.ndim > 1:
            raise TargetError(f"ClassTarget needs an int or a (N,) sequence of ints, got {k!r}")
        self.index = index.long()

    def __call__(self, output: Tensor) -> Tensor:
        if output.ndim != 2:
            raise TargetError(
                f"ClassTarget needs classifier logits (N, num_classes), but the model output is "
                f"{tuple(output.shape)}; use SegmentationTarget for (N, classes, H, W) outputs"
            )
        if self.index.ndim == 1 and self.index.shape[0] != output.shape[0]:
            raise TargetError(f"ClassTarget has {self.index.shape[0]} classes for a batch of {output.shape[0]} "
                              "images; give one int for all or one per image")
        bad = (self.index < 0) | (self.index >= output.shape[1])
        if bool(bad.any()):
            raise TargetError(
                f"ClassTarget class {int(self.index[bad].reshape(-1)[0])} is out of range: the model has "
                f"{output.shape[1]} classes, so it must be in [0, {output.shape[1]})"
            )
        index = self.index.to(output.device).expand(output.shape[0]) if self.index.ndim == 0 \
            else self.index.to(output.device)
        return output.gather(1, index[:, None])[:, 0]

    def for_rows(self, rows: Tensor) -> Target:
        return self if self.index.ndim == 0 else ClassTarget(self.index[rows.cpu()])

    @property
    def class_index(self) -> Tensor:
        return self.index

    def __repr__(self) -> str:
        return f"ClassTarget({self.index.tolist()})"


class SegmentationTarget(Target):
    """``sum_{i,j} output[n, k, i, j] * mask[i, j]``: the class-``k`` logits over a region.

    Args:
        k: the class (e.g. 15 "person" in torchvision's VOC-style segmentation models).
        mask: ``(H, W)`` for every image or ``(N, H, W)`` per image, bool or float weights, at the
            output's resolution (torchvision's segmentation models output the input's ``H x W``).
    """

    def __init__(self, k: int, mask) -> None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise TargetError(f"SegmentationTarget's class must be an int >= 0, got {k!r}")
        mask = _as_tensor(mask, "SegmentationTarget's mask")
        if mask.ndim not in (2, 3):
            raise TargetError(
                f"SegmentationTarget's mask must be (H, W) or (N, H, W), got shape {tuple(mask.shape)}"
            )
        if not (mask.dtype == torch.bool or mask.is_floating_point()):
            mask = mask.bool() if set(torch.unique(mask).tolist()) <= {0, 1} else mask.float()
        self.k = int(k)
        self.mask = mask

    def __call__(self, output: Tensor) -> Tensor:
        if output.ndim != 4:
            raise TargetError(
                f"SegmentationTarget needs a segmentation output (N, classes, H, W), but the model output is "
                f"{tuple(output.shape)}"
            )
        if self.k >= output.shape[1]:
            raise TargetError(f"SegmentationTarget class {self.k} is out of range: the output has "
                              f"{output.shape[1]} classes, so it must be in [0, {output.shape[1]})")
        if tuple(self.mask.shape[-2:]) != tuple(output.shape[-2:]):
            raise TargetError(
                f"SegmentationTarget's mask is {tuple(self.mask.shape[-2:])} but the model output's spatial "
                f"size is {tuple(output.shape[-2:])}; give a mask of shape {tuple(output.shape[-2:])} "
                f"(or (N, {output.shape[-2]}, {output.shape[-1]}))"
            )
        if self.mask.ndim == 3 and self.mask.shape[0] != output.shape[0]:
            raise TargetError(f"SegmentationTarget has {self.mask.shape[0]} masks for a batch of {output.shape[0]} "
                              "images; give one (H, W) mask for all or one per image")
        mask = self.mask.to(device=output.device, dtype=output.dtype)
        return (output[:, self.k] * mask).sum(dim=(-2, -1))

    def for_rows(self, rows: Tensor) -> Target:
        if self.mask.ndim == 2:
            return self
        if int(rows.max()) >= self.mask.shape[0]:
            raise TargetError(f"SegmentationTarget has {self.mask.shape[0]} masks but the batch has more images")
        return SegmentationTarget(self.k, self.mask[rows.to(self.mask.device)])

    def flipped(self) -> Target:
        return SegmentationTarget(self.k, self.mask.flip(-1))

    def __repr__(self) -> str:
        return f"SegmentationTarget({self.k}, mask {tuple(self.mask.shape)})"


class SimilarityTarget(Target):
    """Cosine similarity of the output embedding to ``embedding`` (``(D,)`` for all, ``(N, D)`` per image)."""

    def __init__(self, embedding) -> None:
        embedding = _as_tensor(embedding, "SimilarityTarget's embedding")
        if embedding.ndim not in (1, 2) or not embedding.is_floating_point():
            raise TargetError(f"SimilarityTarget needs a float (D,) or (N, D) embedding, got "
                              f"{embedding.dtype} {tuple(embedding.shape)}")
        self.embedding = embedding

    def __call__(self, output: Tensor) -> Tensor:
        flat = output.flatten(1)
        if flat.shape[1] != self.embedding.shape[-1]:
            raise TargetError(f"SimilarityTarget's embedding has {self.embedding.shape[-1]} values but the model "
                              f"output has {flat.shape[1]} per image ({tuple(output.shape)})")
        if self.embedding.ndim == 2 and self.embedding.shape[0] != flat.shape[0]:
            raise TargetError(f"SimilarityTarget has {self.embedding.shape[0]} embeddings for a batch of "
                              f"{flat.shape[0]} images; give one (D,) embedding or one per image")
        reference = self.embedding.to(device=output.device, dtype=output.dtype)
        return F.cosine_similarity(flat, reference.expand_as(flat), dim=1)

    def for_rows(self, rows: Tensor) -> Target:
        return self if self.embedding.ndim == 1 else SimilarityTarget(self.embedding[rows.to(self.embedding.device)])

    def __repr__(self) -> str:
        return f"SimilarityTarget({tuple(self.embedding.shape)})"


class FunctionTarget(Target):
    """A plain function ``output (B, ...) -> (B,)``, assumed to hold no per-image or spatial data."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        self.fn = fn

    def __call__(self, output: Tensor) -> Tensor:
        return self.fn(output)

    def __repr__(self) -> str:
        return f"FunctionTarget({getattr(self.fn, '__name__', self.fn)!r})"


class PerImageTargets(Target):
    """N callables, one per image, in pytorch-grad-cam's convention: ``fn(output[n]) -> scalar``.

    A :class:`Target` in the list gets ``output[n:n+1]`` (it expects a batch axis) instead.
    """

    def __init__(self, fns: Sequence[Callable], rows: Tensor | None = None, flip: bool = False) -> None:
        self.fns = list(fns)
        self.rows = rows
        self.flip = flip

    def __call__(self, output: Tensor) -> Tensor:
        rows = self.rows if self.rows is not None else torch.arange(output.shape[0])
        if len(rows) != output.shape[0] or int(rows.max()) >= len(self.fns) or \
                (self.rows is None and len(self.fns) != output.shape[0]):
            raise TargetError(f"got {len(self.fns)} target callables for a batch of "
                              f"{max(output.shape[0], int(rows.max()) + 1)} images; "
                              "give one per image (or a single target for all)")
        scores = []
        for b, n in enumerate(rows.tolist()):
            fn = self.fns[n]
            if isinstance(fn, Target):
                fn = fn.flipped() if self.flip else fn
                value = fn(output[b:b + 1])
            else:
                value = fn(output[b])
            if not isinstance(value, Tensor) or value.numel() != 1:
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise TargetError(f"target callable {n} returned {shape}; per-image target callables must "
                                  "return one scalar score")
            scores.append(value.reshape(()))
        return torch.stack(scores)

    def for_rows(self, rows: Tensor) -> Target:
        base = rows.cpu() if self.rows is None else self.rows[rows.cpu()]
        return PerImageTargets(self.fns, base, self.flip)

    def flipped(self) -> Target:
        return PerImageTargets(self.fns, self.rows, not self.flip)

    @property
    def class_index(self) -> Tensor | None:
        found = [_single_class(fn) for fn in self.fns]
        return torch.tensor(found) if all(c is not None for c in found) else None


def _single_class(fn: Callable) -> int | None:
    """The class one per-image target explains: a one-class :class:`ClassTarget`, or pytorch-grad-cam's
    ``ClassifierOutputTarget`` (``.category``); None for anything else."""
    if isinstance(fn, ClassTarget):
        return int(fn.index) if fn.index.numel() == 1 else None
    category = getattr(fn, "category", None)
    return category if isinstance(category, int) and not isinstance(category, bool) else None


def is_target_callable(targets: object) -> bool:
    """True for a callable target or a non-empty sequence of them (tensors and ints are not)."""
    if isinstance(targets, (Tensor, np.ndarray, str, bytes)):
        return False
    if callable(targets):
        return True
    return isinstance(targets, Sequence) and len(targets) > 0 and all(callable(t) for t in targets)


def as_target(targets: Callable | Sequence[Callable]) -> Target:
    """A :class:`Target` for a callable (wrapped in :class:`FunctionTarget` unless it is one) or N callables."""
    if isinstance(targets, Target):
        return targets
    if callable(targets):
        return FunctionTarget(targets)
    return PerImageTargets(targets)
