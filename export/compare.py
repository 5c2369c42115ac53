"""Compare an exported graph with the eager explainer it came from."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from explainer.core import Explainer
from explainer.pipeline import unpack_backbone
from explainer.postprocess import normalize_maps
from export.runtime import GraphRuntime

#: The parity bound the project holds exported graphs to (max abs difference of normalised maps).
TOLERANCE = 1e-4


@dataclass(frozen=True)
class Comparison:
    """How an exported graph's answer differs from eager PyTorch's on one batch.

    Attributes:
        max_diff: max abs difference of the normalised maps (``cams`` for part "full", the
            feature-resolution maps for part "head").
        same_classes: whether both explained (and predicted) the same classes.
        backend: what ran the graph.
    """

    max_diff: float
    same_classes: bool
    backend: str

    @property
    def ok(self) -> bool:
        """Within :data:`TOLERANCE` and the same classes."""
        return self.max_diff <= TOLERANCE and self.same_classes


def compare(explainer: Explainer, runtime: GraphRuntime, images: Tensor) -> Comparison:
    """Explain ``images`` ``(N, 3, H, W)`` eagerly and with ``runtime`` (each image's top class) and compare.

    For a part "head" graph the runtime is fed the explainer's own activations.
    """
    eager = explainer(images)
    if runtime.info.part == "full":
        inputs, reference = images, eager.cams
    else:
        with torch.no_grad():
            inputs = unpack_backbone(explainer.backbone(images))[0].detach()
        assert eager.raw is not None  # the eager explainer always returns its raw maps
        reference = normalize_maps(eager.raw)
    exported = runtime(inputs)
    diff = float((exported.cams.cpu() - reference.cpu()).abs().max())
    return Comparison(diff, bool(torch.equal(exported.targets.cpu(), eager.targets.cpu())), runtime.backend)
