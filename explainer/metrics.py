"""Faithfulness metrics: does the map point at what the model uses?

All take the model ``images (N, 3, H, W) -> logits``, the images, the maps
``(N, H, W)`` (e.g. ``Explanation.cams``) and the target classes ``(N,)``, and score
with the softmax probability ``p(target | image)``.

* :func:`deletion_auc` (lower is better): pixels are replaced by a baseline in order
  of decreasing map value, in ``steps`` equal steps from none to all; the score is the
  area under ``p`` against the removed fraction (trapezoid rule on ``[0, 1]``).
* :func:`insertion_auc` (higher is better): the same from the baseline image, inserting
  the original pixels in the same order.
* :func:`average_drop` (%, lower is better): ``mean_n max(0, Y_n - O_n) / Y_n * 100`` with
  ``Y = p(image)`` and ``O = p(image * map)`` (Chattopadhay et al., 2018).

Probabilities are softmaxes computed in float64 (float32 underflows to 0 for confident
models). Targets must be class indices in ``[0, num_classes)``: ``-1`` (what
:attr:`Explanation.targets` holds for segmentation or similarity targets) is refused.
* :func:`increase_in_confidence` (%, higher is better): ``mean_n [O_n > Y_n] * 100``.

* :func:`road` (Rong et al., 2022, remove-and-debias): for each fraction f in ``fractions``
  (default 0.1, 0.2, ..., 0.9) the ``round(f * H * W)`` most relevant pixels (``order="morf"``,
  lower is better) or least relevant ones (``"lerf"``, higher is better) are removed and
  *imputed* from their neighbours (noisy linear imputation, :mod:`explainer.imputation`), so
  the removal leaves no sharp mask shape for the model to react to; the score is the mean of
  ``p`` over the fractions. :func:`road_combined` is ``(LeRF - MoRF) / 2`` (higher is better),
  pytorch-grad-cam's ``ROADCombined``.

Baselines: ``"blur"`` (Gaussian blur, sigma = 5% of the image side, the usual choice for
deletion/insertion), ``"mean"`` (each image's per-channel mean), ``"zero"``, or a tensor
broadcastable to the images. Ties in the map are ordered by pixel index (row-major).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision.transforms.functional as TF
from torch import Tensor

from explainer.errors import InputError, TargetError
from explainer.imputation import noisy_linear_impute

Model = Callable[[Tensor], Tensor]


def _check(images: Tensor, maps: Tensor, targets: Tensor, steps: int | None = None, batch_size: int = 1) -> Tensor:
    if images.ndim != 4 or maps.ndim != 3 or maps.shape != (images.shape[0], *images.shape[-2:]):
        raise InputError(f"maps must be (N, H, W) = {(images.shape[0], *images.shape[-2:])} for images "
                         f"{tuple(images.shape)}; got {tuple(maps.shape)}")
    targets = torch.as_tensor(targets, device=images.device).reshape(-1).long()
    if targets.shape[0] != images.shape[0]:
        raise InputError(f"got {targets.shape[0]} targets for {images.shape[0]} images")
    if bool((targets < 0).any()):
        raise TargetError(
            f"target {int(targets[targets < 0][0])} is not a class index: metrics score p(target class), and "
            "Explanation.targets holds -1 for targets that are not classes (segmentation, similarity); pass "
            "the class indices to score instead (e.g. the logits' argmax)"
        )
    if steps is not None and steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    return targets


def baseline_images(images: Tensor, baseline: str | Tensor = "blur") -> Tensor:
    """The images with all information removed, per ``baseline`` (see the module doc)."""
    if isinstance(baseline, Tensor):
        return baseline.to(images).expand_as(images)
    if baseline == "blur":
        sigma = 0.05 * max(images.shape[-2:])
        kernel = 2 * int(3 * sigma) + 1
        return TF.gaussian_blur(images, [kernel, kernel], [sigma, sigma])
    if baseline == "mean":
        return images.mean(dim=(-2, -1), keepdim=True).expand_as(images)
    if baseline == "zero":
        return torch.zeros_like(images)
    raise InputError(f"baseline must be 'blur', 'mean', 'zero' or a tensor, got {baseline!r}")


def _class_probabilities(logits: Tensor, targets: Tensor) -> Tensor:
    """``p(targets[b] | row b)`` in float64 (float32 softmax underflows to 0 for confident models);
    :class:`TargetError` for a class the output does not have."""
    if logits.ndim != 2:
        raise TargetError(f"metrics need classifier logits (N, num_classes); the model returned {tuple(logits.shape)}")
    if bool((targets >= logits.shape[1]).any()):
        raise TargetError(f"target {int(targets.max())} is out of range: the model has {logits.shape[1]} classes")
    return logits.double().softmax(dim=1).gather(1, targets.reshape(-1, 1).expand(logits.shape[0], 1))[:, 0]


def _probabilities(model: Model, batch: Tensor, target: Tensor, batch_size: int) -> Tensor:
    out = []
    with torch.no_grad():
        for start in range(0, batch.shape[0], batch_size):
            out.append(_class_probabilities(model(batch[start:start + batch_size]), target))
    return torch.cat(out)


def _ranks(cam: Tensor) -> Tensor:
    """Rank of each pixel, 0 for the highest map value (ties by index)."""
    order = torch.sort(-cam.flatten(), stable=True).indices
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.numel(), device=cam.device)
    return ranks.reshape(cam.shape)


def _curve(model: Model, images: Tensor, maps: Tensor, targets: Tensor, steps: int, baseline: str | Tensor,
           batch_size: int, insert: bool) -> Tensor:
    """``(N, steps + 1)`` probabilities along the deletion (or insertion) path.

    The path's images are built ``batch_size`` at a time (never all ``steps + 1`` at once)."""
    base = baseline_images(images, baseline)
    total = maps.shape[-2] * maps.shape[-1]
    counts = torch.round(torch.arange(steps + 1, device=images.device) * total / steps)
    curves = []
    with torch.no_grad():
        for n in range(images.shape[0]):
            ranks = _ranks(maps[n])[None]
            start, end = (base[n], images[n]) if insert else (images[n], base[n])
            chunks = []
            for first in range(0, steps + 1, batch_size):
                changed = (ranks < counts[first:first + batch_size, None, None])[:, None]  # (B, 1, H, W)
                chunks.append(_class_probabilities(model(torch.where(changed, end[None], start[None])), targets[n]))
            curves.append(torch.cat(chunks))
    return torch.stack(curves)


def deletion_auc(model: Model, images: Tensor, maps: Tensor, targets: Tensor, steps: int = 20,
                 baseline: str | Tensor = "blur", batch_size: int = 32) -> Tensor:
    """Area under ``p(target)`` as the most relevant pixels are removed first: ``(N,)``, lower is better."""
    targets = _check(images, maps, targets, steps, batch_size)
    return torch.trapezoid(_curve(model, images, maps, targets, steps, baseline, batch_size, False), dx=1 / steps)


def insertion_auc(model: Model, images: Tensor, maps: Tensor, targets: Tensor, steps: int = 20,
                  baseline: str | Tensor = "blur", batch_size: int = 32) -> Tensor:
    """Area under ``p(target)`` as the most relevant pixels are inserted first: ``(N,)``, higher is better."""
    targets = _check(images, maps, targets, steps, batch_size)
    return torch.trapezoid(_curve(model, images, maps, targets, steps, baseline, batch_size, True), dx=1 / steps)


def _confidences(model: Model, images: Tensor, maps: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """``(Y, O)``: float64 ``p(target)`` of the images and of the images masked by the maps, ``(N,)`` each."""
    targets = _check(images, maps, targets)
    with torch.no_grad():
        original = _class_probabilities(model(images), targets)
        masked = _class_probabilities(model(images * maps[:, None]), targets)
    return original, masked


def average_drop(model: Model, images: Tensor, maps: Tensor, targets: Tensor) -> float:
    """``mean max(0, Y - O) / Y * 100`` with ``Y = p(image)``, ``O = p(image * map)``; lower is better.

    Probabilities are float64; an image whose ``Y`` is still 0 has nothing to drop and counts as 0.
    """
    original, masked = _confidences(model, images, maps, targets)
    drop = (original - masked).clamp(min=0) / original.clamp(min=torch.finfo(torch.float64).tiny)
    return float(drop.mean() * 100)


def increase_in_confidence(model: Model, images: Tensor, maps: Tensor, targets: Tensor) -> float:
    """Percentage of images whose target probability rises when masked by the map; higher is better."""
    original, masked = _confidences(model, images, maps, targets)
    return float((masked > original).float().mean() * 100)


#: The removed fractions ROAD averages over (pytorch-grad-cam's percentiles 10..90).
ROAD_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def road_curve(model: Model, images: Tensor, maps: Tensor, targets: Tensor, order: str = "morf",
               fractions: tuple[float, ...] = ROAD_FRACTIONS, noise: float = 0.01, seed: int = 0,
               batch_size: int = 32) -> Tensor:
    """``(N, len(fractions))``: ``p(target)`` after removing and imputing each fraction of pixels.

    ``order``: ``"morf"`` removes the most relevant pixels first, ``"lerf"`` the least relevant.
    ``noise``: standard deviation of the noise added to imputed pixels (in the images' units);
    ``seed`` makes it reproducible.
    """
    targets = _check(images, maps, targets, batch_size=batch_size)
    if order not in ("morf", "lerf"):
        raise InputError(f"order must be 'morf' (most relevant first) or 'lerf' (least relevant first), got {order!r}")
    if not fractions or any(not 0 <= f < 1 for f in fractions):
        raise InputError(f"fractions must be a non-empty sequence of values in [0, 1) (removing every pixel leaves "
                         f"nothing to impute from), got {fractions!r}")
    total = maps.shape[-2] * maps.shape[-1]
    curves = []
    for n in range(images.shape[0]):
        generator = torch.Generator().manual_seed(seed)  # per image: its score does not depend on the batch
        ranks = _ranks(maps[n])
        imputed = []
        for fraction in fractions:
            count = round(fraction * total)
            removed = ranks < count if order == "morf" else ranks >= total - count
            imputed.append(noisy_linear_impute(images[n], removed, noise, generator))
        curves.append(_probabilities(model, torch.stack(imputed), targets[n], batch_size))
    return torch.stack(curves)


def road(model: Model, images: Tensor, maps: Tensor, targets: Tensor, order: str = "morf",
         fractions: tuple[float, ...] = ROAD_FRACTIONS, noise: float = 0.01, seed: int = 0,
         batch_size: int = 32) -> Tensor:
    """ROAD score ``(N,)``: mean ``p(target)`` over :func:`road_curve`; MoRF lower / LeRF higher is better."""
    return road_curve(model, images, maps, targets, order, fractions, noise, seed, batch_size).mean(dim=1)


def road_combined(model: Model, images: Tensor, maps: Tensor, targets: Tensor,
                  fractions: tuple[float, ...] = ROAD_FRACTIONS, noise: float = 0.01, seed: int = 0,
                  batch_size: int = 32) -> Tensor:
    """``(ROAD-LeRF - ROAD-MoRF) / 2`` per image ``(N,)``; higher is better (range [-0.5, 0.5])."""
    lerf = road(model, images, maps, targets, "lerf", fractions, noise, seed, batch_size)
    morf = road(model, images, maps, targets, "morf", fractions, noise, seed, batch_size)
    return (lerf - morf) / 2
