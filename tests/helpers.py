"""Helpers the tests share: seeded and calibrated models, random inputs, the architecture list."""

from __future__ import annotations

import functools

import cv2
import numpy as np
import torch
import torchvision

from explainer.models import load_model

#: (architecture, target layer) pairs the method tests cover; "efficientnet-lite0" has real weights.
ARCHITECTURES = [
    ("resnet18", "layer4"),
    ("vgg11", "features"),
    ("densenet121", "features"),
    ("mobilenet_v3_small", "features"),
    ("efficientnet_b0", "features"),
    ("convnext_tiny", "features"),
    ("efficientnet-lite0", "_conv_head"),
]


@functools.cache
def seeded_model(name: str, seed: int = 0) -> torch.nn.Module:
    """An eval-mode model with seeded random weights (or the real Lite0 weights), built once per session."""
    if name.startswith("efficientnet-lite"):
        return load_model(name).model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torchvision.models.get_model(name, weights=None).eval()


def random_input(n: int = 2, size: int = 64, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=gen)


#: torchvision segmentation models (their builders also take ``weights_backbone``).
SEGMENTATION_MODELS = ("fcn_resnet50", "deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50", "lraspp_mobilenet_v3_large")


@functools.cache
def calibrated_model(name: str, size: int = 64, seed: int = 0) -> torch.nn.Module:
    """A seeded random model whose batch-norm statistics are estimated on random images.

    Untrained torchvision models with default statistics shrink activations to ~1e-15 by the
    logits (EfficientNet, MobileNet), making the top class a near-tie; calibrated ones have
    O(1) activations, so "same predicted class" is a meaningful check. Lite0 keeps its real weights.
    """
    if name.startswith("efficientnet-lite"):
        return load_model(name).model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        extra = {"weights_backbone": None} if name in SEGMENTATION_MODELS else {}
        model = torchvision.models.get_model(name, weights=None, **extra)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # cumulative average
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(8, 3, size, size))
    return model.eval()


def write_video(path, frames: int, seed: int = 0, size: tuple[int, int] = (64, 48)) -> list[np.ndarray]:
    """A Motion-JPEG video of ``frames`` random ``size`` (width, height) frames at ``path``; returns its
    frames as OpenCV decodes them (RGB uint8): what a reader of the file sees, compression included."""
    width, height = size
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (width, height))
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    writer.release()
    capture, decoded = cv2.VideoCapture(str(path)), []
    while True:
        ok, bgr = capture.read()
        if not ok:
            capture.release()
            return decoded
        decoded.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
