"""The explanation's step sequence, shared by the eager explainer and both exported graphs.

    image (N, 3, H, W)
      -> backbone, without grad            -> unpack_backbone: activations (N, C, h, w), skips
      -> gradient step                     -> logits, gradients (N, K, C, h, w)
         (autograd eagerly and in TorchScript; make_fx-traced or analytic in ONNX; none for
         activation-only methods)
      -> method                            -> raw maps (N, K, h, w)
      -> finish_maps: min-max normalise, bilinear upsample to (H, W) -> cams

The eager :class:`~explainer.core.Explainer` and the exported graphs (one
:class:`export.graph.ExplanationGraph` for TorchScript and ONNX alike) call these same functions,
and score targets with :func:`explainer.gradients.one_hot_target` (one convention: negative means
argmax), so the formats cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from explainer.errors import LayerShapeError
from explainer.postprocess import normalize_maps, upsample_maps


def unpack_backbone(out: Tensor | Sequence[Tensor]) -> tuple[Tensor, tuple[Tensor, ...]]:
    """``(activations, skips)`` from a backbone's output: a tensor, or ``(activations, *skips)``."""
    if isinstance(out, Tensor):
        return out, ()
    activations, *skips = tuple(out)
    if not isinstance(activations, Tensor):
        raise LayerShapeError(f"the target layer outputs {type(activations).__name__}, not a tensor")
    return activations, tuple(skips)


def finish_maps(raw: Tensor, height: int, width: int, upsample: bool = True) -> Tensor:
    """Raw maps ``(N, K, h, w)`` -> min-max normalised maps, upsampled to ``(N, K, height, width)``
    when ``upsample`` (else kept at ``(N, K, h, w)``). TorchScript-compatible."""
    maps = normalize_maps(raw)
    if upsample:
        maps = upsample_maps(maps, height, width)
    return maps
