"""Turn the ``targets`` argument into a ``(N, K)`` tensor of class indices."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from explainer.errors import TargetError

#: What ``targets`` may be: None (argmax), an int, N ints, a ``(N,)`` or ``(N, K)`` tensor/array.
Targets = None | int | Sequence[int] | Sequence[Sequence[int]] | Tensor | np.ndarray


def resolve_targets(targets: Targets, logits: Tensor) -> tuple[Tensor, bool]:
    """Class indices ``(N, K)`` (long, on the logits' device) and whether K is the user's.

    ``None`` picks each image's argmax; an int is used for every image; a
    sequence or ``(N,)`` tensor gives one class per image; a ``(N, K)`` tensor or
    nested sequence gives K classes per image. The boolean is True only for the
    ``(N, K)`` forms, so results keep a K axis exactly when the caller asked for one.

    Raises :class:`TargetError` on a wrong length, dtype, rank or an index outside
    ``[0, num_classes)``.
    """
    n, num_classes = logits.shape
    if targets is None:
        return logits.detach().argmax(dim=1, keepdim=True), False
    if isinstance(targets, bool) or isinstance(targets, (float, str)):
        raise TargetError(f"targets must be None, an int, N ints or an (N, K) int tensor; got {targets!r}")
    if isinstance(targets, numbers.Integral):
        t = torch.full((n, 1), int(targets), dtype=torch.long)
        given_k = False
    else:
        try:
            t = torch.as_tensor(np.asarray(targets) if not isinstance(targets, Tensor) else targets)
        except (TypeError, ValueError) as exc:
            raise TargetError(f"targets could not be read as integers: {exc}") from exc
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
    bad = (t < 0) | (t >= num_classes)
    if bool(bad.any()):
        raise TargetError(
            f"target class {int(t[bad][0])} is out of range: the model has {num_classes} classes, "
            f"so targets must be in [0, {num_classes})"
        )
    # clone: a tensor made under torch.inference_mode cannot be saved for backward (gather saves it)
    return t.to(device=logits.device, dtype=torch.long).clone(), given_k

