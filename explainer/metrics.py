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

from explainer.errors import InputError
from explainer.imputation import noisy_linear_impute

Model = Callable[[Tensor], Tensor]


def _check(images: Tensor, maps: Tensor, targets: Tensor, steps: int | None = None, batch_size: int = 1) -> Tensor:
    if images.ndim != 4 or maps.ndim != 3 or maps.shape != (images.shape[0], *images.shape[-2:]):
        raise InputError(f"maps must be (N, H, W) = {(images.shape[0], *images.shape[-2:])} for images "
                         f"{tuple(images.shape)}; got {tuple(maps.shape)}")
    targets = torch.as_tensor(targets, device=images.device).reshape(-1).long()
    if targets.shape[0] != images.shape[0]:
        raise InputError(f"got {targets.shape[0]} targets for {images.shape[0]} images")
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


def _probabilities(model: Model, batch: Tensor, target: Tensor, batch_size: int) -> Tensor:
    out = []
    with torch.no_grad():
        for start in range(0, batch.shape[0], batch_size):
            out.append(model(batch[start:start + batch_size]).softmax(dim=1)[:, target])
    return torch.cat(out)


def _ranks(cam: Tensor) -> Tensor:
    """Rank of each pixel, 0 for the highest map value (ties by index)."""
    order = torch.sort(-cam.flatten(), stable=True).indices
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.numel(), device=cam.device)
    return ranks.reshape(cam.shape)


def _curve(model: Model, images: Tensor, maps: Tensor, targets: Tensor, steps: int, baseline: str | Tensor,
           batch_size: int, insert: bool) -> Tensor:
    """``(N, steps + 1)`` probabilities along the deletion (or insertion) path."""
    base = baseline_images(images, baseline)
    total = maps.shape[-2] * maps.shape[-1]
    counts = torch.round(torch.arange(steps + 1, device=images.device) * total / steps)
    curves = []
    for n in range(images.shape[0]):
        changed = (_ranks(maps[n])[None] < counts[:, None, None])[:, None]  # (steps+1, 1, H, W)
        start, end = (base[n], images[n]) if insert else (images[n], base[n])
        path = torch.where(changed, end[None], start[None])
        curves.append(_probabilities(model, path, targets[n], batch_size))
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
    targets = _check(images, maps, targets)
    with torch.no_grad():
        original = model(images).softmax(dim=1).gather(1, targets[:, None])[:, 0]
        masked = model(images * maps[:, None]).softmax(dim=1).gather(1, targets[:, None])[:, 0]
    return original, masked


def average_drop(model: Model, images: Tensor, maps: Tensor, targets: Tensor) -> float:
    """``mean max(0, Y - O) / Y * 100`` with ``Y = p(image)``, ``O = p(image * map)``; lower is better."""
    original, masked = _confidences(model, images, maps, targets)
    return float(((original - masked).clamp(min=0) / original).mean() * 100)


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
    if not fractions or any(not 0 <= f <= 1 for f in fractions):
        raise InputError(f"fractions must be a non-empty sequence of values in [0, 1], got {fractions!r}")
    generator = torch.Generator().manual_seed(seed)
    total = maps.shape[-2] * maps.shape[-1]
    curves = []
    for n in range(images.shape[0]):
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
