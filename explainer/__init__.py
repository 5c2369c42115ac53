"""deploycam's explainer: hook-free Grad-CAM-family maps for PyTorch CNNs.

    from explainer import Explainer
    exp = Explainer(model.eval(), "layer4", method="gradcam")
    result = exp(images)          # images: (N, 3, H, W)
    result.cams                   # (N, H, W), float32 in [0, 1]
"""

from explainer.core import Explainer
from explainer.errors import (
    DeployCamError,
    ExportError,
    GradModeError,
    InputError,
    LayerNotFoundError,
    LayerShapeError,
    MethodError,
    ModelOutputError,
    NonFiniteError,
    TargetError,
    TraceError,
)
from explainer.explanation import Explanation
from explainer.layers import LayerInfo, list_layers
from explainer.methods import METHODS, CamMethod, get_method
from explainer.overlay import make_grid, overlay
from explainer.postprocess import normalize_maps, upsample_maps
from explainer.reshape import ChannelsLast, TokenGrid
from explainer.split import SplitModel, split_model
from explainer.target_functions import ClassTarget, SegmentationTarget, SimilarityTarget, Target

__all__ = [
    "Explainer", "Explanation", "METHODS", "CamMethod", "get_method",
    "overlay", "make_grid", "list_layers", "LayerInfo", "split_model", "SplitModel",
    "normalize_maps", "upsample_maps",
    "Target", "ClassTarget", "SegmentationTarget", "SimilarityTarget", "TokenGrid", "ChannelsLast",
    "DeployCamError", "ExportError", "GradModeError", "InputError", "LayerNotFoundError", "LayerShapeError",
    "MethodError", "ModelOutputError", "NonFiniteError", "TargetError", "TraceError",
]
