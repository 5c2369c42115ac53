"""deploycam's explainer: hook-free Grad-CAM-family maps for PyTorch CNNs.

    from explainer import Explainer
    exp = Explainer(model.eval(), "layer4", method="gradcam")
    result = exp(images)          # images: (N, 3, H, W)
    result.cams                   # (N, H, W), float32 in [0, 1]

The names below are imported on first use (PEP 562), so ``import explainer`` and the
``deploycam`` command line start without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Imported eagerly (OpenCV and NumPy only): the function `overlay` must win over the submodule of
# the same name, which the import system would otherwise set as this package's attribute.
from explainer.overlay import make_grid, overlay

#: public name -> the module that defines it
_EXPORTS = {
    "Explainer": "explainer.core",
    "Explanation": "explainer.explanation",
    "METHODS": "explainer.methods", "CamMethod": "explainer.methods", "get_method": "explainer.methods",
    "list_layers": "explainer.layers", "LayerInfo": "explainer.layers",
    "split_model": "explainer.split", "SplitModel": "explainer.split",
    "normalize_maps": "explainer.postprocess", "upsample_maps": "explainer.postprocess",
    "Target": "explainer.targets", "ClassTarget": "explainer.targets",
    "SegmentationTarget": "explainer.targets", "SimilarityTarget": "explainer.targets",
    "TokenGrid": "explainer.reshape", "ChannelsLast": "explainer.reshape",
    **{name: "explainer.errors" for name in (
        "DeployCamError", "ExportError", "GradModeError", "InputError", "LayerNotFoundError", "LayerShapeError",
        "MethodError", "ModelLoadError", "ModelOutputError", "NonFiniteError", "OnnxModelError", "TargetError",
        "TraceError")},
    "OnnxExplainer": "explainer.onnx_import.explainer_onnx",
    "DetectionTarget": "explainer.detection.targets",
}

__all__ = ["overlay", "make_grid", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'explainer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from explainer.core import Explainer
    from explainer.detection.targets import DetectionTarget
    from explainer.errors import (
        DeployCamError,
        ExportError,
        GradModeError,
        InputError,
        LayerNotFoundError,
        LayerShapeError,
        MethodError,
        ModelLoadError,
        ModelOutputError,
        NonFiniteError,
        OnnxModelError,
        TargetError,
        TraceError,
    )
    from explainer.explanation import Explanation
    from explainer.layers import LayerInfo, list_layers
    from explainer.methods import METHODS, CamMethod, get_method
    from explainer.onnx_import.explainer_onnx import OnnxExplainer
    from explainer.postprocess import normalize_maps, upsample_maps
    from explainer.reshape import ChannelsLast, TokenGrid
    from explainer.split import SplitModel, split_model
    from explainer.targets import ClassTarget, SegmentationTarget, SimilarityTarget, Target
