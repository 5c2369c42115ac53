"""Multi-layer CAM for classifiers: ``Explainer(model, ["layer3", "layer4"], method)``.

Each layer is explained by its own :class:`~explainer.Explainer` (one split per layer, so one model
forward per layer), the targets fixed once from the first layer's call so every layer explains the
same classes, and the maps combined with pytorch-grad-cam's multi-layer rule (the rule detectors use
too, :func:`explainer.detection.scoring.combine_levels`): each layer's map ReLU'd, min-max normalised
and resized to the input -- what each layer's ``cams`` already is -- then averaged over the layers and
normalised again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from explainer.errors import LayerNotFoundError
from explainer.explanation import Explanation
from explainer.methods import CamMethod
from explainer.postprocess import normalize_maps


class MultiLayerExplainer:
    """Several target layers of one classifier, one combined map (see the module docstring).

    Built by ``Explainer(model, [layer, ...], method, **options)``; calls take the same arguments as
    :meth:`Explainer.__call__` and return an :class:`Explanation` whose ``cams`` is the combined map,
    ``raw`` None (the layers' maps have different sizes: see :attr:`layer_explainers`), and ``layer``
    the names joined with ``+``.
    """

    def __init__(self, model: nn.Module, target_layers: Sequence[Any], method: str | CamMethod = "gradcam",
                 **options: Any) -> None:
        from explainer.core import Explainer

        if len(target_layers) == 0:
            raise LayerNotFoundError("target_layer is an empty list; give one layer or several")
        self.layer_explainers = [Explainer(model, layer, method, **options) for layer in target_layers]
        self.method = self.layer_explainers[0].method
        self.layer = "+".join(e.layer for e in self.layer_explainers)

    #: images are ``(N, C, H, W)``, as for :class:`~explainer.Explainer`
    input_layout = "nchw"

    def to_nchw(self, x: Tensor) -> Tensor:
        return x

    @property
    def layers(self) -> list[str]:
        """The explained layers' names."""
        return [e.layer for e in self.layer_explainers]

    def with_method(self, method: str | CamMethod) -> MultiLayerExplainer:
        """The same layers (their splits shared) with another method."""
        other = object.__new__(MultiLayerExplainer)
        other.layer_explainers = [e.with_method(method) for e in self.layer_explainers]
        other.method = other.layer_explainers[0].method
        other.layer = self.layer
        return other

    def __call__(self, x: Tensor, targets: Any = None, *, topk: int | None = None, aug_smooth: bool = False,
                 eigen_smooth: bool = False) -> Explanation:
        """Explain ``x`` ``(N, C, H, W)`` at every layer; ``cams`` ``(N, H, W)`` (or ``(N, K, H, W)``)."""
        first = self.layer_explainers[0](x, targets, topk=topk, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)
        fixed = targets if callable(targets) or _is_callable_list(targets) else first.targets
        cams = [first.cams]
        for explainer in self.layer_explainers[1:]:
            cams.append(explainer(x, fixed, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth).cams)
        combined = normalize_maps(torch.stack(cams).mean(dim=0))
        return Explanation(first.logits, first.targets, None, combined, self.method.name, self.layer)

    explain = __call__

    def __repr__(self) -> str:
        return f"MultiLayerExplainer({self.method.name} at {self.layer})"


def _is_callable_list(targets: Any) -> bool:
    return isinstance(targets, (list, tuple)) and len(targets) > 0 and all(callable(t) for t in targets)
