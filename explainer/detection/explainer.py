"""Explanations of torchvision detectors: :meth:`explainer.Explainer.for_detector`.

    exp = Explainer.for_detector(model.eval(), "fpn", "gradcam")
    result = exp(images, DetectionTarget(labels=[1], boxes=[[10, 20, 200, 220]]))   # images (N, 3, H, W) in [0, 1]
    result.cams              # (N, H, W): multi-layer CAM over the FPN levels
    per_box = exp.explain_detections(images, score_threshold=0.5)   # one map per kept detection

The detector is split at its feature maps (:mod:`explainer.detection.parts`): the backbone runs
without grad, the rest of the detector (torchvision's own code) is differentiated from the maps on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from explainer.checks import check_grad_mode, check_input
from explainer.detection import scoring
from explainer.detection.parts import Prepared, detector_parts
from explainer.detection.targets import DetectionTarget, as_detection_targets
from explainer.errors import InputError, LayerNotFoundError, MethodError, NonFiniteError
from explainer.methods import CamMethod, get_method
from explainer.methods.base import Probe, weighted_sum
from explainer.smoothing import AUGMENTATIONS, contributions, eigen_smooth
from explainer.tracing_lock import running

#: target_layer of the backbone's levels concatenated (pytorch-grad-cam's fasterrcnn_reshape_transform)
CONCAT = "concat"


@dataclass(frozen=True)
class DetectionExplanation:
    """Maps for a batch of detector inputs.

    Attributes:
        detections: the detector's output per image (``boxes`` ``(D, 4)`` in input pixels, ``labels``,
            ``scores``), detached.
        cams: ``(N, H, W)``, or ``(N, K, H, W)`` for K targets per image: the multi-layer map (each
            level's map ReLU'd, min-max normalised and resized to the input, averaged, normalised again).
        level_maps: each explained level's raw map ``(N, K, h_l, w_l)``, before normalisation.
        method, layers: what was explained where.
    """

    detections: list[dict[str, Tensor]]
    cams: Tensor
    level_maps: list[Tensor]
    method: str
    layers: list[str]


@dataclass(frozen=True)
class ExplainedDetection:
    """One kept detection and its map: ``box`` ``(4,)``, ``label``, ``score``, ``cam`` ``(H, W)``."""

    box: Tensor
    label: int
    score: float
    cam: Tensor


class DetectionExplainer:
    """Class activation maps for torchvision detectors (Faster/Mask/Keypoint R-CNN, RetinaNet, FCOS, SSD).

    Built by :meth:`explainer.Explainer.for_detector`. Images are ``(N, 3, H, W)`` floats in [0, 1] at
    any size (the detector's transform resizes them); maps come back at ``H x W``. The model is left as
    it was: no hooks, no ``.grad``, no changed buffers.
    """

    def __init__(self, model: nn.Module, target_layer: str | Sequence[str] = "fpn",
                 method: str | CamMethod = "gradcam", batch_size: int = 8, progress: bool = True) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.batch_size = batch_size  # perturbation methods: detector copies per forward
        self.progress = progress
        self.parts = detector_parts(model)
        self.model = self.parts.model
        self.concat = isinstance(target_layer, str) and target_layer == CONCAT
        self.method = self._checked(get_method(method))
        self.levels, self.layers = self._levels(target_layer)

    def _checked(self, method: CamMethod) -> CamMethod:
        if method.requires_linear_head or method.reruns_model:
            raise MethodError(f"{method.name} is not available for detectors: it needs "
                              f"{'a pooling + linear classifier head' if method.requires_linear_head else 'the whole model re-run per channel'}"
                              "; use a gradient method, eigencam (no gradient), ablationcam or reciprocam (head-only)")
        if self.concat and (method.needs_gradient or not method.exportable):
            raise MethodError(f"target_layer={CONCAT!r} is a derived tensor (levels resized and concatenated) that "
                              f"no score depends on, so {method.name} has no gradient there and nothing to perturb; "
                              "use eigencam on it, or 'fpn' / a list of levels")
        return method

    def _levels(self, target_layer: str | Sequence[str]) -> tuple[list[int] | None, list[str]]:
        names = self.parts.target_names()
        if target_layer in ("fpn", "backbone", "detect"):
            return None, names or ["backbone"]
        if self.concat:
            return None, ["backbone (levels concatenated)"]
        wanted = [target_layer] if isinstance(target_layer, str) else list(target_layer)
        if names is None:
            raise LayerNotFoundError(f"{type(self.model).__name__} has no FPN; its target is 'backbone' (the "
                                     f"backbone's output maps), got {target_layer!r}")
        levels = []
        for name in wanted:
            if name not in names:
                raise LayerNotFoundError(f"{name!r} is not one of this detector's target maps; use 'fpn' (every "
                                         f"level) or a list of: {', '.join(names)}")
            levels.append(names.index(name))
        return levels, wanted

    def with_method(self, method: str | CamMethod) -> DetectionExplainer:
        """The same detector and layers with another method."""
        other = object.__new__(DetectionExplainer)
        other.__dict__.update(self.__dict__)
        other.method = other._checked(get_method(method))
        return other

    def _check(self, images: Tensor) -> None:
        check_grad_mode()
        param = next(self.model.parameters())
        check_input(images, param.device, param.dtype, 3, allow_empty=True)
        if getattr(self.model, "training", False):
            raise InputError(f"{type(self.model).__name__} is in training mode (it would return losses, not "
                             "detections); call model.eval() first")

    def __call__(self, images: Tensor, targets: DetectionTarget | Sequence | None = None, *,
                 aug_smooth: bool = False, eigen_smooth: bool = False) -> DetectionExplanation:
        """Explain ``images`` ``(N, 3, H, W)`` in [0, 1].

        ``targets``: a :class:`DetectionTarget` (all images), N of them, or N lists of K (one map per
        target, one batched backward); None explains each image's highest-scoring detection
        (eigencam is class-agnostic and needs none); an image with no detection gets an all-zero map.
        An empty batch ``(0, 3, H, W)`` gives an empty result (no detections, ``cams`` ``(0, H, W)``).
        ``aug_smooth``: ``cams`` is the mean over the images and 5 augmented copies (horizontal flip x
        intensity 0.9/1.0/1.1, as pytorch-grad-cam), the reference boxes mirrored with flipped copies
        and each map flipped back (``level_maps`` stay the original's). ``eigen_smooth``: the first
        principal component of the channel contributions instead of their sum.
        """
        self._check(images)
        if len(images) == 0:  # an empty batch: an empty result
            return DetectionExplanation([], images.new_zeros(0, *images.shape[-2:]), [], self.method.name,
                                        list(self.layers))
        with running():
            prepared = self.parts.prepare(images)
            levels = self.parts.selected(prepared, self.levels)
            if targets is None and self._needs_targets:
                with torch.no_grad():
                    found = self.parts.detect(prepared, prepared.maps)
                targets = [_top_detection(d) for d in found]
            per_image, keep_k = (as_detection_targets(targets, len(images)) if targets is not None
                                 else (None, False))
            detections, raws = self._maps(prepared, levels, per_image, eigen_smooth)
            cams = combine_levels(raws, prepared)
            if aug_smooth:
                cams = self._augmented_mean(images, cams, levels, per_image, eigen_smooth)
        if not keep_k:
            cams = cams[:, 0]
        layers = self.layers if self.concat else self.parts.level_names(prepared, levels)
        return DetectionExplanation(_detached(detections), cams, [r.detach() for r in raws], self.method.name, layers)

    explain = __call__

    def _augmented_mean(self, images: Tensor, cams: Tensor, levels: list[int],
                        per_image: list[list[DetectionTarget]] | None, eigen: bool) -> Tensor:
        """The mean of ``cams`` ``(N, K, H, W)`` and the maps of the augmented copies, flipped back."""
        width = images.shape[-1]
        all_cams = [cams]
        for flip, factor in AUGMENTATIONS:
            augmented = images * factor
            targets = per_image
            if flip:
                augmented = augmented.flip(-1)
                targets = None if per_image is None else [[t.flipped(width) for t in ts] for ts in per_image]
            prepared = self.parts.prepare(augmented)
            _, raws = self._maps(prepared, levels, targets, eigen)
            c = combine_levels(raws, prepared)
            all_cams.append(c.flip(-1) if flip else c)
        return torch.stack(all_cams).mean(0)

    @property
    def _needs_targets(self) -> bool:
        return self.method.needs_gradient or not self.method.exportable  # eigencam is class-agnostic

    def explain_detections(self, images: Tensor, score_threshold: float = 0.5,
                           max_boxes: int | None = None) -> list[list[ExplainedDetection]]:
        """Every detection scoring at least ``score_threshold`` (the ``max_boxes`` best per image when
        given), each with its own map.

        One backbone forward, one detector-head run (with grad, for gradient methods: it also picks the
        boxes) and one batched backward for the whole batch: the K kept boxes of each image are K
        :class:`DetectionTarget` s (the box and its label), images with fewer boxes padded.
        (For YOLO and Faster R-CNN the heads run once without grad, and the backward crosses only the kept
        boxes' own anchors or RoIs: :mod:`explainer.detection.anchor_split`, :mod:`explainer.detection.roi_split`.)
        Returns, per image, its detections with maps ``(H, W)``, best score first: an empty list for an
        image with no detection above the threshold; ``[]`` for an empty batch.
        """
        if not 0.0 <= float(score_threshold) <= 1.0:
            raise InputError(f"score_threshold must be in [0, 1], got {score_threshold}")
        self._check(images)
        if len(images) == 0:
            return []
        with running():
            prepared = self.parts.prepare(images)
            levels = self.parts.selected(prepared, self.levels)
            forward = None
            if self.method.needs_gradient and not self.concat:  # one head run, with grad: it picks the boxes too
                forward = self._forward(prepared, levels, hasattr(self.parts, "splits"))
                found = _detached(forward[1])
            else:
                with torch.no_grad():
                    found = self.parts.detect(prepared, prepared.maps)
            kept = [d["scores"] >= score_threshold for d in found]
            if max_boxes is not None:
                if isinstance(max_boxes, bool) or not isinstance(max_boxes, int) or max_boxes < 1:
                    raise InputError(f"max_boxes must be None or an int >= 1, got {max_boxes!r}")
                kept = [k & (torch.arange(len(k), device=k.device) < max_boxes) for k in kept]  # sorted by score
            counts = [int(k.sum()) for k in kept]
            if max(counts, default=0) == 0:
                return [[] for _ in found]
            k = max(counts)
            per_image = []
            for d, keep in zip(found, kept):
                targets = [DetectionTarget([int(label)], box[None].tolist(), iou_threshold=0.5, same_label=True)
                           for box, label in zip(d["boxes"][keep], d["labels"][keep])]
                per_image.append(targets + [NO_DETECTION] * (k - len(targets)))
            if self.method.exportable:
                _, raws = self._maps(prepared, levels, per_image, False, forward)
                cams = combine_levels(raws, prepared)
            else:  # perturbation methods: one image at a time (a padding target's score 0 has no weights)
                cams = torch.zeros(len(found), k, *images.shape[-2:], dtype=images.dtype, device=images.device)
                for i, count in enumerate(counts):
                    if count:
                        one = prepared.subset(torch.tensor([i], device=images.device))
                        _, raws = self._maps(one, levels, [per_image[i][:count]], False)
                        cams[i, :count] = combine_levels(raws, one)[0]
        out = []
        for i, (d, keep) in enumerate(zip(found, kept)):
            out.append([ExplainedDetection(box.detach(), int(label), float(score), cams[i, j])
                        for j, (box, label, score) in enumerate(zip(d["boxes"][keep], d["labels"][keep],
                                                                    d["scores"][keep]))])
        return out

    def _forward(self, prepared: Prepared, levels: list[int],
                 dense: bool) -> tuple[list[Tensor], list[dict[str, Tensor]], Any]:
        """The explained levels as leaves and the detector run from them (with grad for gradient methods):
        ``(leaves, detections, decoded)``; ``decoded`` only when ``dense``: what the parts' ``level_gradients``
        reads -- where they split the heads (``split_forward``: YOLO's crops, R-CNN's RoIs) the outputs the
        detections are differentiable from (leaves: the heads ran without grad), else a dense head's output."""
        needs_grad = self.method.needs_gradient
        leaves = [prepared.maps[i].detach().requires_grad_(needs_grad) for i in levels]
        maps = list(prepared.maps)
        for i, leaf in zip(levels, leaves):
            maps[i] = leaf.clone() if needs_grad else leaf  # clone: the head may work in place
        with torch.set_grad_enabled(needs_grad):
            if dense and needs_grad:  # the heads without grad, detections differentiable from what the parts split at
                split = self.parts.split_forward(prepared, maps)
                if split is not None:
                    return leaves, split[0], split[1]
            if dense and hasattr(self.parts, "detect_decoded"):  # a dense head: K gradients from a few backwards
                detections, decoded = self.parts.detect_decoded(prepared, maps)
                return leaves, detections, decoded
            return leaves, self.parts.detect(prepared, maps), None

    def _maps(self, prepared: Prepared, levels: list[int], per_image: list[list[DetectionTarget]] | None,
              eigen: bool, forward: tuple[list[Tensor], list[dict[str, Tensor]], Any] | None = None,
              ) -> tuple[list[dict[str, Tensor]], list[Tensor]]:
        """Detections and each level's raw map ``(N, K, h_l, w_l)``; ``forward``: :meth:`_forward`'s run of
        these levels when the caller already has it (gradient methods only)."""
        if not self.method.exportable:
            assert per_image is not None
            return self._perturbation_maps(prepared, levels, per_image, eigen)
        if self.concat:  # one map of the concatenated levels, gradient-free
            with torch.no_grad():
                detections = self.parts.detect(prepared, prepared.maps)
                merged = self.parts.concatenated(prepared)
                raw = self.method.compute(merged, merged.new_empty(0))
            if not bool(torch.isfinite(raw).all()):
                raise NonFiniteError(f"{self.method.name} produced NaN/inf values on the detector's feature maps")
            k = 1 if per_image is None else len(per_image[0])
            return detections, [raw.expand(-1, k, -1, -1)]
        needs_grad = self.method.needs_gradient
        split = needs_grad and per_image is not None and hasattr(self.parts, "splits") and \
            self.parts.splits(len(per_image[0]))
        leaves, detections, decoded = forward if forward is not None else self._forward(prepared, levels, split)
        split = split and decoded is not None
        k = 1 if per_image is None else len(per_image[0])
        if needs_grad:
            assert per_image is not None
            with torch.enable_grad():
                scores = torch.stack([torch.stack([t(d) for t in ts]) for d, ts in zip(detections, per_image)])
            grads = None
            if split and scores.requires_grad:
                grads = self.parts.level_gradients(scores, decoded, leaves, levels, prepared)
            if grads is None:
                grads = _level_gradients(scores, leaves)
        else:
            grads = [leaf.new_empty(0) for leaf in leaves]
        raws = []
        for activations, gradients in zip(leaves, grads):
            a = activations.detach()
            parts = contributions(self.method, a, gradients) if eigen else None
            raw = eigen_smooth(parts) if parts is not None else self.method.compute(a, gradients)
            raw = raw.expand(-1, k, -1, -1) if raw.shape[1] != k else raw
            if not bool(torch.isfinite(raw).all()):
                raise NonFiniteError(f"{self.method.name} produced NaN/inf values on the detector's feature maps")
            raws.append(raw)
        return detections, raws


    def _perturbation_maps(self, prepared: Prepared, levels: list[int], per_image: list[list[DetectionTarget]],
                           eigen: bool) -> tuple[list[dict[str, Tensor]], list[Tensor]]:
        """Ablation-CAM / ReciproCAM per level: the method's own loop, with a probe that runs the rest of the
        detector on ``batch_size`` changed copies of one level's maps (the other levels as they were)."""
        with torch.no_grad():
            detections = self.parts.detect(prepared, prepared.maps)
        raws = []
        for level in levels:
            a = prepared.maps[level]
            probe = self._probe(prepared, level, per_image)
            if self.method.perturbation is not None:
                weights = self.method.perturbation(a, probe)
                parts = contributions(self.method, a, a.new_empty(0), weights) if eigen else None
                raw = eigen_smooth(parts) if parts is not None else weighted_sum(weights, a)
            else:
                assert self.method.perturbation_map is not None
                raw = self.method.perturbation_map(a, probe)
            if not bool(torch.isfinite(raw).all()):
                raise NonFiniteError(f"{self.method.name} produced NaN/inf values on the detector's feature maps")
            raws.append(raw)
        return detections, raws

    def _probe(self, prepared: Prepared, level: int, per_image: list[list[DetectionTarget]]) -> Probe:
        """What a perturbation method runs: ``head(maps of level (B, C, h, w), rows (B,)) -> target scores
        (B, K)``, where ``rows`` says which image each copy is."""

        def head(level_maps: Tensor, rows: Tensor) -> Tensor:
            index = rows.tolist()
            sub = prepared.subset(rows)
            maps = list(sub.maps)
            maps[level] = level_maps
            found = self.parts.detect(sub, maps)
            return torch.stack([torch.stack([t(d) for t in per_image[i]]) for d, i in zip(found, index)])

        def whole_model(images: Tensor) -> Tensor:
            raise MethodError(f"{self.method.name} re-runs the whole model; not available for detectors")

        rows = torch.arange(len(prepared.images), device=prepared.images.device)
        return Probe(head, (rows,), whole_model, lambda output, _rows: output, len(per_image[0]), prepared.images,
                     batch_size=self.batch_size, progress=self.progress)


def _level_gradients(scores: Tensor, leaves: list[Tensor]) -> list[Tensor]:
    """d scores[n, k] / d leaf[n] for every leaf: ``(N, K, C, h, w)`` each (zeros where a score does not
    depend on the maps: no detection matched its target)."""
    n, k = scores.shape
    if not scores.requires_grad:
        return [leaf.new_zeros(n, k, *leaf.shape[1:]) for leaf in leaves]
    if k == 1:
        grads = torch.autograd.grad(scores.sum(), leaves, allow_unused=True)
        return [torch.zeros_like(leaf) .unsqueeze(1) if g is None else g.unsqueeze(1) for g, leaf in zip(grads, leaves)]
    select = torch.eye(k, dtype=scores.dtype, device=scores.device)[:, None, :].expand(k, n, k)
    try:
        grads = torch.autograd.grad(scores, leaves, grad_outputs=select, is_grads_batched=True, allow_unused=True)
        batched = [g.transpose(0, 1) if g is not None else None for g in grads]
    except RuntimeError:  # an op without a batching rule: one backward per target instead
        per_k = [torch.autograd.grad(scores[:, j].sum(), leaves, retain_graph=j < k - 1, allow_unused=True)
                 for j in range(k)]
        batched = [torch.stack([torch.zeros_like(leaf) if g[i] is None else g[i] for g in per_k], dim=1)
                   for i, leaf in enumerate(leaves)]
    return [leaf.new_zeros(n, k, *leaf.shape[1:]) if g is None else g for g, leaf in zip(batched, leaves)]


def combine_levels(raws: list[Tensor], prepared: Prepared) -> Tensor:
    """Multi-layer CAM of ``prepared``'s images, ``(N, K, H, W)``: :func:`~explainer.detection.scoring.combine_levels`
    through the detector's canvas (the padding its transform added is cropped away)."""
    height, width = prepared.images.shape[-2:]
    hc, wc = prepared.canvas.shape[-2:]
    h, w = prepared.image_sizes[0]
    return scoring.combine_levels(raws, height, width, hc, wc, h, w)


#: a target that matches nothing: an all-zero map (padding, and images with no detection)
NO_DETECTION = DetectionTarget([-1], [[0.0, 0.0, 0.0, 0.0]])


def _top_detection(detection: dict[str, Tensor]) -> DetectionTarget:
    """The highest-scoring detection as a target (:data:`NO_DETECTION` where there is none)."""
    if len(detection["scores"]) == 0:
        return NO_DETECTION
    best = int(detection["scores"].argmax())
    return DetectionTarget([int(detection["labels"][best])], detection["boxes"][best][None].tolist(), same_label=True)


def _detached(detections: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
    return [{key: value.detach() for key, value in d.items()} for d in detections]
