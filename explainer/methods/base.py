"""What a CAM method is, and the weighted-sum step most of them share.

A method maps the target layer's activations and the gradients of the target
scores with respect to them to one raw map per image and target:

    activations: (N, C, h, w)
    gradients:   (N, K, C, h, w)  -- K target classes per image; an empty tensor
                                     for methods with ``needs_gradient=False``
    returns:     (N, K, h, w)     -- or (N, 1, h, w) for class-agnostic methods

Every function is plain tensor code (no Python branching on values), so the
exported graphs script or trace the very same functions.

A new method is one module in this package that defines ``METHOD = CamMethod(...)``: the
registry finds it, and the eager explainer, both exports, the CLI, the bench and the
parametrised tests pick it up from there (its float64 formula goes in ``tests/reference.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from tqdm import tqdm

CamFunction = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Probe:
    """What perturbation methods may run: the head on changed activations, or the whole model.

    Attributes:
        head: ``(activations (B, C, h, w), *skips) -> output (B, ...)``.
        skips: the other values the head reads, for the whole batch (first axis N).
        model: ``images (B, 3, H, W) -> output (B, ...)``: backbone then head.
        score: ``(output (B, ...), rows (B,)) -> (B, K)``: the target scores of output rows that
            belong to images ``rows`` (class logits or a target callable's scores).
        num_targets: K, the targets per image.
        images: the input batch ``(N, 3, H, W)``.
        batch_size: how many perturbed copies go through one forward.
        max_channels: Score-CAM only: keep this many channels (highest mean activation); None = all.
        progress: show a tqdm bar over the forwards.
        class_scores: True when the targets are class indices of ``(B, num_classes)`` logits, so a
            method may score softmax probabilities (ReciproCAM) instead of logits.
    """

    head: Callable[..., Tensor]
    skips: tuple
    model: Callable[[Tensor], Tensor]
    score: Callable[[Tensor, Tensor | None], Tensor]
    num_targets: int
    images: Tensor
    batch_size: int = 32
    max_channels: int | None = None
    progress: bool = True
    class_scores: bool = False

    @classmethod
    def for_parts(cls, backbone: Callable, head: Callable[..., Tensor], skips: tuple, images: Tensor,
                  score: Callable[[Tensor, Tensor | None], Tensor], num_targets: int,
                  select: Callable[[object], Tensor], batch_size: int = 32, max_channels: int | None = None,
                  progress: bool = True, class_scores: bool = False) -> Probe:
        """The probe for a split model: ``select`` picks the explained tensor from the head's output;
        the head gets a copy of the activations (it may modify its input in place)."""
        from explainer.pipeline import unpack_backbone

        def model(x: Tensor) -> Tensor:
            a, extra = unpack_backbone(backbone(x))
            return select(head(a, *extra))

        def head_on_copy(a: Tensor, *extra: Tensor) -> Tensor:
            return select(head(a.clone(), *extra))

        return cls(head_on_copy, skips, model, score, num_targets, images, batch_size, max_channels, progress,
                   class_scores)

    def skips_for(self, n: int, copies: int) -> tuple:
        """Image ``n``'s skips repeated ``copies`` times along the batch axis."""
        return tuple(s[n:n + 1].expand(copies, *s.shape[1:]) if isinstance(s, Tensor) else s for s in self.skips)

    def scores_of_image(self, output: Tensor, n: int) -> Tensor:
        """``(B, K)`` scores of ``output`` rows that are all copies of image ``n``."""
        return self.score(output, torch.full((output.shape[0],), n, dtype=torch.long))


def forward_bar(probe: Probe, name: str, n_images: int, items: int) -> tqdm:
    """The progress bar over a perturbation method's forwards: ``n_images * ceil(items / batch_size)``
    steps (``items``: channels or positions per image), shown when ``probe.progress`` is on and the
    loop has more than 16 steps."""
    steps = n_images * -(-items // probe.batch_size)
    return tqdm(total=steps, desc=name, unit="fwd", leave=False, disable=None if probe.progress and steps > 16 else True)


#: ``(activations (N, C, h, w), probe) -> channel weights (N, K, C)`` (or maps ``(N, K, h, w)``
#: for :attr:`CamMethod.perturbation_map`).
PerturbationFunction = Callable[[Tensor, Probe], Tensor]


@dataclass(frozen=True)
class CamMethod:
    """A registered CAM method.

    Attributes:
        name: the registry key (``"gradcam"``).
        compute: ``(activations (N, C, h, w), gradients (N, K, C, h, w)) -> (N, K, h, w)``.
        needs_gradient: False for methods that only read activations (EigenCAM).
        requires_linear_head: True when the method is only defined for heads that
            are global average pooling followed by a linear layer (CAM).
        weights: for methods of the form ``ReLU(sum_c w_c A_c)``: ``(activations, gradients) -> w (N, K, C)``.
        contributions: for element-wise methods: ``(activations, gradients) -> (N, K, C, h, w)``,
            whose channel sum (before the ReLU) is the map. ``eigen_smooth`` projects either on
            its first principal component instead of summing.
        perturbation: for methods that re-run the head or the model on perturbed inputs
            (Ablation-CAM, Score-CAM) instead of using gradients: ``(activations, probe)
            -> channel weights (N, K, C)``; ``compute`` is then unused.
        perturbation_map: for perturbation methods whose result is a map, not channel weights
            (ReciproCAM): ``(activations, probe) -> raw maps (N, K, h, w)``.
        reruns_head: True when the method feeds changed activations back to the head, so it
            cannot work through a ``reshape`` (the head reads the layer's own layout).
        reruns_model: True when the method re-runs the whole model per channel batch (seconds
            per image: not for every frame).
        aliases: other names :func:`explainer.methods.get_method` accepts.
        order: where the method appears in listings (lower first; ties by name).
        batch_size: perturbation methods: perturbed copies per forward.
        max_channels: Score-CAM: keep this many channels (highest mean activation); None = all.
        summary: one line for help texts.

    A method's options are its own: ``get_method("scorecam").with_options(max_channels=256)``
    (``Explainer(..., batch_size=, max_channels=)`` does the same for its method).
    """

    name: str
    compute: CamFunction
    summary: str
    needs_gradient: bool = True
    requires_linear_head: bool = False
    weights: CamFunction | None = None
    contributions: CamFunction | None = None
    perturbation: PerturbationFunction | None = None
    perturbation_map: PerturbationFunction | None = None
    reruns_head: bool = False
    reruns_model: bool = False
    aliases: tuple[str, ...] = ()
    order: int = 100
    batch_size: int = 32
    max_channels: int | None = None

    def with_options(self, batch_size: int | None = None, max_channels: int | None = None) -> CamMethod:
        """This method with other options (None keeps the current value); :class:`MethodError` for bad ones."""
        from explainer.errors import MethodError

        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise MethodError(f"batch_size must be an integer >= 1 (perturbed copies per forward), got {batch_size!r}")
        if max_channels is not None and (isinstance(max_channels, bool) or not isinstance(max_channels, int)
                                         or max_channels < 1):
            raise MethodError(f"max_channels must be None (all channels) or an integer >= 1, got {max_channels!r}")
        return replace(self, batch_size=self.batch_size if batch_size is None else batch_size,
                       max_channels=self.max_channels if max_channels is None else max_channels)

    @property
    def exportable(self) -> bool:
        """True when the method is one graph (no perturbation loop): TorchScript and ONNX export it."""
        return self.perturbation is None and self.perturbation_map is None


def perturbation_only(activations: Tensor, gradients: Tensor) -> Tensor:  # pragma: no cover - never called
    """The ``compute`` of perturbation methods, which run through ``CamMethod.perturbation`` instead."""
    raise NotImplementedError("this method re-runs the network and has no (activations, gradients) formula")


def weighted_sum(channel_weights: Tensor, activations: Tensor) -> Tensor:
    """ReLU(sum_c w[n, k, c] * A[n, c]) for weights ``(N, K, C)`` and activations ``(N, C, h, w)``.

    Returns ``(N, K, h, w)``.
    """
    return torch.relu(torch.einsum("nkc,nchw->nkhw", channel_weights, activations))
