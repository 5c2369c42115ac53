"""What an explanation scores: the ``targets`` argument turned into a :class:`Scorer`.

Class indices become a ``(N, K)`` index tensor (:func:`resolve_targets`, :func:`topk_targets`);
target callables (:mod:`explainer.targets`) are wrapped as they are. "targets or topk" is
checked here, once, for the eager explainer and the exported runtimes alike.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from explainer.errors import TargetError

#: What ``targets`` may be: None (argmax), an int, N ints, a ``(N,)`` or ``(N, K)`` tensor/array, a target
#: callable ``output (N, ...) -> (N,)`` (e.g. :class:`~explainer.targets.ClassTarget`), or N per-image callables.
Targets = (None | int | Sequence[int] | Sequence[Sequence[int]] | Tensor | np.ndarray
           | Callable[[Tensor], Tensor] | Sequence[Callable[..., Tensor]])


def class_index_tensor(targets: Targets, n: int, num_classes: int | None = None) -> tuple[Tensor, bool]:
    """Class indices given as an int, N ints or an ``(N, K)`` form -> ``(N, K)`` integer tensor (on the
    device they were given on; CPU for Python values) and whether K is the user's. Checks the form
    (type, dtype, rank, batch), not the range; :func:`resolve_targets` checks that.
    """
    classes = f"[0, {num_classes})" if num_classes is not None else "the model's class range"
    range_hint = (f"the model has {num_classes} classes, so targets must be in [0, {num_classes})"
                  if num_classes is not None else "targets must be in the model's class range")
    if isinstance(targets, bool) or isinstance(targets, (float, str)) or targets is None:
        raise TargetError(f"targets must be None, an int, N ints or an (N, K) int tensor; got {targets!r}")
    if isinstance(targets, numbers.Integral):
        if not -(2**63) <= int(targets) < 2**63:
            raise TargetError(f"target class {targets} is out of range: {range_hint}")
        t = torch.full((n, 1), int(targets), dtype=torch.long)
        given_k = False
    else:
        try:
            t = torch.as_tensor(np.asarray(targets) if not isinstance(targets, Tensor) else targets)
        except (TypeError, ValueError, OverflowError) as exc:
            raise TargetError(f"targets could not be read as class indices in {classes}: {exc}") from exc
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise TargetError(f"targets must hold integer class indices, got dtype {t.dtype}")
        given_k = t.ndim == 2
        if t.ndim == 0:
            t = t.reshape(1, 1).expand(n, 1)
        elif t.ndim == 1:
            if t.shape[0] != n:
                raise TargetError(f"got {t.shape[0]} targets for a batch of {n} images; give one per image or a single int")
            t = t.unsqueeze(1)
        elif t.ndim == 2:
            if t.shape[0] != n or t.shape[1] == 0:
                raise TargetError(f"targets of shape {tuple(t.shape)} do not fit a batch of {n}: expected (N={n}, K>=1)")
        else:
            raise TargetError(f"targets must be (N,) or (N, K); got shape {tuple(t.shape)}")
    return t, given_k


def resolve_targets(targets: Targets, logits: Tensor, deferred=None) -> tuple[Tensor, bool]:
    """Class indices ``(N, K)`` (long, on the logits' device) and whether K is the user's.

    ``None`` picks each image's argmax; an int is used for every image; a
    sequence or ``(N,)`` tensor gives one class per image; a ``(N, K)`` tensor or
    nested sequence gives K classes per image. The boolean is True only for the
    ``(N, K)`` forms, so results keep a K axis exactly when the caller asked for one.

    Raises :class:`TargetError` on a wrong length, dtype, rank or an index outside
    ``[0, num_classes)``. The range of targets given as a tensor on another device than the
    CPU is checked through ``deferred`` (a :class:`~explainer.checks.DeferredChecks`) when one
    is given, without a synchronisation; the indices are then clamped until it is verified.
    """
    n, num_classes = logits.shape
    if targets is None:
        return logits.detach().argmax(dim=1, keepdim=True), False
    t, given_k = class_index_tensor(targets, n, num_classes)
    bad = (t < 0) | (t >= num_classes)

    def error(given: Tensor = t) -> TargetError:  # bound now: t is clamped below when the check is deferred
        first_bad = int(given[(given < 0) | (given >= num_classes)][0])  # from the values at raise time
        return TargetError(f"target class {first_bad} is out of range: the model has {num_classes} classes, "
                           f"so targets must be in [0, {num_classes})")

    if deferred is not None and t.device.type != "cpu":
        deferred.add(~bad.any(), error)
        t = t.clamp(0, num_classes - 1)
    elif bool(bad.any()):
        raise error()
    # clone: a tensor made under torch.inference_mode cannot be saved for backward (gather saves it)
    return t.to(device=logits.device, dtype=torch.long).clone(), given_k


class Scorer:
    """What is explained, as one function: ``scorer(output (B, ...), rows (B,)) -> scores (B, K)``.

    ``rows`` are the image indices the output rows belong to (perturbation methods score
    batches of copies of one image); None when the output is the batch itself. Built by :func:`make_scorer` from class indices
    ``(N, K)`` or from a target callable (K = 1, see :mod:`explainer.targets`).
    """

    def __init__(self, indices: Tensor | None = None, target=None, keep_k: bool = False) -> None:
        self.indices = indices
        self.target = target
        self.keep_k = keep_k

    @property
    def k(self) -> int:
        """Targets per image."""
        return 1 if self.indices is None else int(self.indices.shape[1])

    def labels(self, n: int, device: torch.device) -> Tensor:
        """``(N, K)`` class indices for :attr:`Explanation.targets` (-1 for non-class targets)."""
        if self.indices is not None:
            return self.indices
        index = self.target.class_index
        if index is None:
            return torch.full((n, 1), -1, dtype=torch.long, device=device)
        return index.to(device=device, dtype=torch.long).expand(n).reshape(n, 1).clone()

    def flipped(self) -> Scorer:
        """The scorer for horizontally flipped images (``aug_smooth``)."""
        return self if self.target is None else Scorer(None, self.target.flipped(), self.keep_k)

    def __call__(self, output: Tensor, rows: Tensor | None = None) -> Tensor:
        if self.indices is not None:
            return output.gather(1, self.indices if rows is None else self.indices[rows])
        scores = (self.target if rows is None else self.target.for_rows(rows))(output)
        b = output.shape[0]
        if not isinstance(scores, Tensor) or scores.shape not in ((b,), (b, 1)):
            shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise TargetError(
                f"the target callable returned {shape} for a batch of {b} images; it must return one "
                f"scalar score per image, shape ({b},)"
            )
        if not scores.is_floating_point():
            raise TargetError(f"the target callable returned {scores.dtype} scores; they must be floating")
        return scores.reshape(b, 1)


def make_scorer(targets, output: Tensor, topk: int | None = None, deferred=None) -> Scorer:
    """The :class:`Scorer` for the explainer's ``targets``/``topk`` arguments and the model ``output``.

    Class indices need classifier logits ``(N, num_classes)``; target callables take any output.
    """
    from explainer.targets import as_target, is_target_callable

    check_one_of(targets, topk)
    if is_target_callable(targets):
        return Scorer(None, as_target(targets))
    if output.ndim != 2:
        raise TargetError(
            f"the model output is {tuple(output.shape)}, not classifier logits (N, num_classes), so class "
            "indices cannot be targets; pass a target callable, e.g. SegmentationTarget(k, mask) for "
            "segmentation or SimilarityTarget(embedding) for embeddings"
        )
    if topk is not None:
        return Scorer(topk_targets(output, topk), None, True)
    indices, keep_k = resolve_targets(targets, output, deferred)
    return Scorer(indices, None, keep_k)


def check_one_of(targets: Targets, topk: int | None) -> None:
    """Raise :class:`TargetError` when both ``targets`` and ``topk`` are given (eager and exported runtimes)."""
    if topk is not None and targets is not None:
        raise TargetError("give either targets or topk, not both")


def topk_targets(logits: Tensor, topk: int) -> Tensor:
    """Each image's ``topk`` best classes ``(N, topk)``, best first; raises :class:`TargetError` unless
    ``topk`` is an int in ``[1, num_classes]``."""
    if isinstance(topk, bool) or not isinstance(topk, numbers.Integral) or not 1 <= int(topk) <= logits.shape[1]:
        raise TargetError(f"topk must be an int in [1, {logits.shape[1]}] (the number of classes), got {topk!r}")
    return logits.detach().topk(int(topk), dim=1).indices
