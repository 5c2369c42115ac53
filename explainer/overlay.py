"""Pictures: a CAM blended over its image, and a grid of several maps with captions (OpenCV)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np

from explainer.colormaps import COLORMAPS, colormap_id
from explainer.errors import InputError

if TYPE_CHECKING:  # torch is not imported at run time: `import explainer` stays light
    import torch

__all__ = ["COLORMAPS", "colorize", "overlay", "make_grid", "save_png"]


def _as_uint8_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"image must be (H, W, 3) RGB or (H, W) grey, got shape {image.shape}")
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating) and image.max() <= 1.0:
            image = image * 255.0
        image = np.clip(image, 0, 255).astype(np.uint8)
    return image


def colorize(cam: np.ndarray | torch.Tensor, colormap: str | int = "jet") -> np.ndarray:
    """A map ``(h, w)`` with values in [0, 1] as an RGB uint8 picture ``(h, w, 3)``."""
    if hasattr(cam, "detach"):  # a torch.Tensor
        cam = cam.detach().float().cpu().numpy()
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise InputError(f"cam must be a single (H, W) map, got shape {cam.shape}")
    grey = np.clip(np.nan_to_num(cam) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(grey, colormap_id(colormap)), cv2.COLOR_BGR2RGB)


def overlay(
    image_rgb_uint8: np.ndarray,
    cam: np.ndarray | torch.Tensor,
    colormap: str | int = "jet",
    alpha: float = 0.5,
) -> np.ndarray:
    """Blend a CAM over an image: ``(1 - alpha) * image + alpha * colormap(cam)``.

    Args:
        image_rgb_uint8: ``(H, W, 3)`` RGB uint8 (floats in [0, 1] and grey images are converted).
        cam: ``(h, w)`` map in [0, 1]; resized bilinearly to ``H x W`` when it differs.
        colormap: any OpenCV colour map name (``"jet"``, ``"turbo"``, ``"viridis"``...) or ``cv2.COLORMAP_*`` id.
        alpha: weight of the heat map, in [0, 1].

    Returns:
        ``(H, W, 3)`` RGB uint8.
    """
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    image = _as_uint8_rgb(image_rgb_uint8)
    heat = colorize(cam, colormap)
    if heat.shape[:2] != image.shape[:2]:
        heat = cv2.resize(heat, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    return cv2.addWeighted(image, 1.0 - alpha, heat, alpha, 0.0)


def _caption(tile: np.ndarray, text: str) -> np.ndarray:
    height = max(18, tile.shape[0] // 12)
    bar = np.full((height, tile.shape[1], 3), 255, dtype=np.uint8)
    scale = height / 30.0
    while len(text) > 3 and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > tile.shape[1] - 4:
        text = text[:-4] + "..."
    cv2.putText(bar, text, (2, int(height * 0.75)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([tile, bar], axis=0)


def make_grid(
    image_rgb_uint8: np.ndarray,
    cams: Sequence[np.ndarray | torch.Tensor],
    titles: Sequence[str] | None = None,
    colormap: str | int = "jet",
    alpha: float = 0.5,
    include_image: bool = True,
) -> np.ndarray:
    """One row: the image, then one overlay per map, each with a caption underneath.

    Returns ``(H + caption, W * (len(cams) + include_image), 3)`` RGB uint8; use it for
    the top-k classes of one image (``titles`` like ``"285 Egyptian cat 0.81"``).
    """
    image = _as_uint8_rgb(image_rgb_uint8)
    titles = list(titles) if titles is not None else [""] * len(cams)
    if len(titles) != len(cams):
        raise InputError(f"got {len(titles)} titles for {len(cams)} maps")
    tiles = [_caption(image, "input")] if include_image else []
    tiles += [_caption(overlay(image, c, colormap, alpha), t) for c, t in zip(cams, titles)]
    return np.concatenate(tiles, axis=1)


def draw_boxes(
    image_rgb_uint8: np.ndarray,
    boxes: np.ndarray | torch.Tensor,
    captions: Sequence[str],
    color: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """A copy of the image with each box ``(x1, y1, x2, y2)`` (pixels) outlined and captioned above it.

    ``boxes`` is ``(B, 4)``; ``captions`` has one text per box (``"dog 0.87"``). Returns RGB uint8.
    """
    picture = _as_uint8_rgb(image_rgb_uint8).copy()
    if hasattr(boxes, "detach"):  # a tensor (torch is not imported here)
        boxes = boxes.detach().cpu().numpy()
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1:] != (4,) or len(boxes) != len(captions):
        raise InputError(f"draw_boxes needs (B, 4) boxes and B captions, got {boxes.shape} and {len(captions)}")
    scale = max(0.35, picture.shape[0] / 800.0)
    thickness = max(1, round(picture.shape[0] / 300))
    for (x1, y1, x2, y2), text in zip(boxes.round().astype(int), captions):
        cv2.rectangle(picture, (int(x1), int(y1)), (int(x2), int(y2)), color, thickness, cv2.LINE_AA)
        (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = max(int(y1) - h - base - 2, 0)
        cv2.rectangle(picture, (int(x1), top), (int(x1) + w + 4, top + h + base + 2), color, -1)
        cv2.putText(picture, text, (int(x1) + 2, top + h + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return picture


def save_png(path: str, image_rgb_uint8: np.ndarray) -> None:
    """Write an RGB uint8 image as PNG (OpenCV); raises OSError if it cannot be written."""
    if not cv2.imwrite(str(path), cv2.cvtColor(_as_uint8_rgb(image_rgb_uint8), cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
