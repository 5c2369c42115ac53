"""Explain a video file or a camera frame by frame: :func:`explain_video` (``deploycam explain clip.mp4``).

OpenCV reads the frames (``cv2.VideoCapture``: any file format its build reads, or a camera index)
and writes the overlays (``cv2.VideoWriter``: ``.mp4``/``.m4v``/``.mov`` as MPEG-4, others as
Motion-JPEG). Frames are preprocessed like images (``Preprocess``; ``resize="squash"`` keeps the
whole frame), explained in batches of ``batch_size`` for throughput, or one at a time with
``latency=True`` (each frame's overlay written as soon as it is explained), by the eager explainer
or an exported graph's runtime. Each output frame is the overlay at the model's input size with a
caption: the explained class, its probability, and the frames per second achieved so far (reading,
explaining and writing included).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from explainer.errors import InputError
from explainer.imaging import VIDEO_SUFFIXES, Preprocess
from explainer.labels import label_of
from explainer.overlay import overlay

__all__ = ["VIDEO_SUFFIXES", "VideoRun", "explain_video"]


@dataclass(frozen=True)
class VideoRun:
    """``frames`` explained in ``seconds`` (wall time, reading and writing included), each frame's
    explained class in ``targets``, written to ``out``."""

    out: str
    frames: int
    seconds: float
    targets: list[int] = field(default_factory=list)
    declared_frames: int = 0  # what the file's container declares (0: unknown, or a camera)

    @property
    def cut_short(self) -> bool:
        """True when a whole-file run decoded fewer frames than the container declares (a truncated file)."""
        return 0 < self.frames < self.declared_frames
    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def check_not_the_input(source: str | int, out: str) -> None:
    """:class:`InputError` when ``out`` is the video file ``source`` itself (the same path, or a link to it):
    writing would destroy the frames being read, whatever ``--overwrite`` says."""
    if isinstance(source, int) or not os.path.exists(out):
        return
    if os.path.realpath(source) == os.path.realpath(out) or os.path.samefile(source, out):
        raise InputError(f"the output {out} is the input video {source}: the input is never overwritten; "
                         "give another output path")


def _writer(out: str, fps: float, size: int) -> cv2.VideoWriter:
    codec = "mp4v" if out.lower().endswith((".mp4", ".m4v", ".mov")) else "MJPG"
    fourcc = cv2.VideoWriter.fourcc(*codec)
    writer = cv2.VideoWriter(out, fourcc, fps, (size, size))
    if not writer.isOpened():
        raise InputError(f"OpenCV cannot write a video to {out} ({codec}); use a .avi or .mp4 name in a writable folder")
    return writer


def explain_video(source: str | int, explain: Callable, out: str, preprocess: Preprocess | None = None, *,
                  batch_size: int = 8, latency: bool = False, colormap: str = "jet", alpha: float = 0.5,
                  max_frames: int | None = None, device: str = "cpu",
                  on_frame: Callable[[int, float], None] | None = None) -> VideoRun:
    """Explain every frame of ``source`` (a video file, or a camera index) into the video ``out``.

    ``explain(images (B, 3, S, S)) -> Explanation``: an :class:`~explainer.Explainer` or
    ``export.load(...)``'s runtime. ``max_frames`` stops early (cameras never end otherwise);
    ``on_frame(frames_done, fps)`` is called after each written frame (a progress bar hook).
    """
    preprocess = preprocess or Preprocess(resize="squash")
    check_not_the_input(source, out)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be an int >= 1, got {batch_size!r}")
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        raise InputError(f"OpenCV cannot open {'camera ' + str(source) if isinstance(source, int) else source} "
                         "as a video" + ("" if isinstance(source, int) else _why_unopenable(source)))
    rate = capture.get(cv2.CAP_PROP_FPS)
    declared = 0 if isinstance(source, int) else max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
    if max_frames is not None:
        declared = min(declared, max_frames)
    writer = _writer(out, rate if rate and rate > 0 else 25.0, preprocess.crop_size)
    step = 1 if latency else batch_size
    frames, targets = 0, []
    start = time.perf_counter()
    try:
        while max_frames is None or frames < max_frames:
            views: list[np.ndarray] = []
            tensors: list[torch.Tensor] = []
            while len(views) < step and (max_frames is None or frames + len(views) < max_frames):
                ok, bgr = capture.read()
                if not ok:
                    break
                x, view = preprocess(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                views.append(view)
                tensors.append(x)
            if not views:
                break
            result = explain(torch.stack(tensors).to(device))
            probabilities = result.logits.detach().float().softmax(dim=1).cpu()
            cams = result.cams.detach().float().cpu().numpy()
            for i, view in enumerate(views):
                target = int(result.targets[i])
                frames += 1
                fps = frames / (time.perf_counter() - start)
                caption = (f"{label_of(target, probabilities.shape[1])} {float(probabilities[i, target]):.2f}"
                           f" | {fps:.1f} fps")
                picture = overlay(view, cams[i], colormap, alpha)
                _put_caption(picture, caption)
                writer.write(cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
                targets.append(target)
                if on_frame is not None:
                    on_frame(frames, fps)
    finally:
        capture.release()
        writer.release()
    if frames == 0:
        os.remove(out)  # the empty video this call created (``out`` is never the input: checked above)
        raise InputError(f"{source} gave no frames OpenCV could decode (a truncated or empty video?)")
    return VideoRun(out, frames, time.perf_counter() - start, targets, declared)


def _why_unopenable(path: str) -> str:
    """A hint for a video file OpenCV cannot open: empty, or its container cut short."""
    size = os.path.getsize(path) if os.path.isfile(path) else None
    if size == 0:
        return " (the file is empty)"
    return f" (a truncated or damaged {os.path.splitext(path)[1] or 'video'} file, or a codec this OpenCV lacks)"


def _put_caption(picture: np.ndarray, text: str) -> None:
    """White text on a dark band along the frame's bottom edge, in place."""
    height = max(14, picture.shape[0] // 14)
    picture[-height:] = (picture[-height:] * 0.35).astype(np.uint8)
    scale = height / 28.0
    cv2.putText(picture, text, (3, picture.shape[0] - height // 4), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 255, 255), 1, cv2.LINE_AA)
