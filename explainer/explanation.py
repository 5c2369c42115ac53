"""The result of one explainer call."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor


@dataclass(frozen=True)
class Explanation:
    """Maps and scores for a batch, all on the input's device, float32 unless the model is not.

    Attributes:
        logits: ``(N, num_classes)`` raw model outputs.
        targets: ``(N,)`` long class indices, or ``(N, K)`` when K classes per image were asked for.
        raw: the method's map at feature resolution, before normalisation: ``(N, h, w)`` or ``(N, K, h, w)``;
            None for results of exported graphs, which output only the normalised map.
        cams: ``raw`` min-max normalised per map (``(m - min) / (max - min + 1e-7)``) and bilinearly
            upsampled to the input's ``H x W``: ``(N, H, W)`` or ``(N, K, H, W)``, values in [0, 1].
        method: the method's registry name.
        layer: the target layer's name.
    """

    logits: Tensor
    targets: Tensor
    raw: Tensor | None
    cams: Tensor
    method: str = ""
    layer: str = ""

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    @property
    def probabilities(self) -> Tensor:
        """Softmax of the logits, ``(N, num_classes)``."""
        return self.logits.detach().softmax(dim=1)

    def numpy(self) -> dict[str, np.ndarray]:
        """``logits``, ``probabilities``, ``targets``, ``raw``, ``cams`` as NumPy arrays (copied to the CPU)."""
        return {
            "logits": self.logits.detach().cpu().numpy(),
            "probabilities": self.probabilities.cpu().numpy(),
            "targets": self.targets.cpu().numpy(),
            "cams": self.cams.detach().cpu().numpy(),
        } | ({} if self.raw is None else {"raw": self.raw.detach().cpu().numpy()})

    def cam_numpy(self, index: int = 0, k: int = 0) -> np.ndarray:
        """One map ``(H, W)`` as float32 NumPy: image ``index``, target ``k`` (ignored without a K axis)."""
        cam = self.cams[index]
        if cam.ndim == 3:
            cam = cam[k]
        return cam.detach().float().cpu().numpy()
