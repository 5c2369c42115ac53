"""Loading images (OpenCV, BGR -> RGB) and the ImageNet preprocessing recipe."""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from explainer.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
#: video files (by suffix) that ``deploycam explain`` and dataset sources read frame by frame with OpenCV
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv")


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` RGB uint8.

    Raises :class:`FileNotFoundError` for a missing file and :class:`InputError`
    for a file OpenCV cannot decode, or a truncated JPEG (which OpenCV would return with
    grey rows in place of the missing data).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no image file at {path}")
    data = np.fromfile(path, dtype=np.uint8)
    if data[:2].tobytes() == b"\xff\xd8" and not _ends_with_jpeg_eoi(data):
        raise InputError(f"{path} is a truncated JPEG (no end-of-image marker): the file is incomplete")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise InputError(f"{path} is not an image OpenCV can read (supported: {', '.join(IMAGE_SUFFIXES)})")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _ends_with_jpeg_eoi(data: np.ndarray) -> bool:
    """True when a JPEG's data ends with the EOI marker ``FF D9`` (trailing padding bytes allowed)."""
    return data[-64:].tobytes().rstrip(b"\x00\r\n \xff").endswith(b"\xff\xd9")


@dataclass(frozen=True)
class Preprocess:
    """torchvision's ImageNet recipe with OpenCV.

    ``resize="crop"`` (default): scale the short side to ``resize_size`` then take the
    central ``crop_size`` square, as torchvision's weights transforms do.
    ``resize="squash"``: scale the whole image to ``crop_size x crop_size`` (keeps the
    whole frame, as deployed detectors and stream pipelines usually do).
    Then ``(x / scale - mean) / std`` with ``scale`` 255 by default, in RGB order (``bgr=True``:
    channels reversed first, for models trained on OpenCV's BGR images; ``mean``/``std`` are then
    in BGR order too).
    """

    crop_size: int = 224
    resize_size: int = 256
    resize: str = "crop"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    scale: float = 255.0
    bgr: bool = False

    def __post_init__(self) -> None:
        if self.resize not in ("crop", "squash"):
            raise InputError(f"resize must be 'crop' or 'squash', got {self.resize!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise InputError(f"mean and std need 3 values (one per channel), got {self.mean!r} and {self.std!r}")
        if any(s == 0 for s in self.std) or not self.scale > 0:
            raise InputError(f"std values and scale must be non-zero (got std {self.std!r}, scale {self.scale!r})")

    def view(self, image_rgb_uint8: np.ndarray) -> np.ndarray:
        """The ``(crop_size, crop_size, 3)`` uint8 picture the model sees (what to draw overlays on)."""
        image = np.asarray(image_rgb_uint8)
        h, w = image.shape[:2]
        if self.resize == "squash":
            return _resize(image, self.crop_size, self.crop_size)
        scale = self.resize_size / min(h, w)
        new_w, new_h = max(self.crop_size, round(w * scale)), max(self.crop_size, round(h * scale))
        resized = _resize(image, new_w, new_h)
        top, left = (new_h - self.crop_size) // 2, (new_w - self.crop_size) // 2
        return np.ascontiguousarray(resized[top:top + self.crop_size, left:left + self.crop_size])

    def to_tensor(self, view_rgb_uint8: np.ndarray) -> torch.Tensor:
        """Normalise a uint8 view into a ``(3, H, W)`` float32 tensor."""
        x = torch.from_numpy(np.ascontiguousarray(view_rgb_uint8)).permute(2, 0, 1).float().div_(self.scale)
        if self.bgr:
            x = x.flip(0)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std

    def picture(self, tensor: torch.Tensor) -> np.ndarray:
        """The inverse of :meth:`to_tensor`: a normalised ``(3, H, W)`` tensor -> its ``(H, W, 3)`` uint8 RGB
        picture (values outside the picture's range clipped), to draw overlays on tensors a dataset made."""
        x = tensor.detach().float().cpu() * torch.tensor(self.std).view(3, 1, 1) + torch.tensor(self.mean).view(3, 1, 1)
        if self.bgr:
            x = x.flip(0)
        return np.ascontiguousarray((x * self.scale).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy())

    def __call__(self, image_rgb_uint8: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """``(tensor (3, S, S), view (S, S, 3) uint8)`` for one RGB image."""
        view = self.view(image_rgb_uint8)
        return self.to_tensor(view), view


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    shrinking = width * height < image.shape[0] * image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def sample_images() -> dict[str, np.ndarray]:
    """The bundled real photos (from scikit-image): ``{"chelsea": cat, "coffee": espresso}``, RGB uint8."""
    from skimage import data

    return {"chelsea": data.chelsea(), "coffee": data.coffee()}
