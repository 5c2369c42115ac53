"""Video files as a dataset source: every frame a row (``path`` ``clip.mp4#frame=12``), decoded in order.

A fleet's recordings are videos: ``explain_dataset`` takes video files (by suffix) in a source folder or
list file, or a video file as the source itself, next to images. OpenCV decodes each video
sequentially in one DataLoader worker (videos are spread over the workers, one whole video each);
frames are preprocessed like images. A rerun with ``resume`` skips the frames already written (they are
grabbed, not decoded). A video OpenCV cannot open, or one with no decodable frame, is one error row
under the video's own path; a video that stops decoding before the frame count its container declares
(a file cut short) gives its decodable frames' rows and one error row at the first missing frame.
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2
from torch.utils.data import IterableDataset, get_worker_info

from explainer.dataset.sources import ImageFile, failed_item, source_item
from explainer.imaging import Preprocess

#: separates a video's path from the frame index in a row's ``path``
FRAME_MARK = "#frame="


def frame_path(video_path: str, index: int) -> str:
    """The row ``path`` of frame ``index`` (0-based) of the video stored as ``video_path``."""
    return f"{video_path}{FRAME_MARK}{index}"


def split_frame_path(path: str) -> tuple[str, int | None]:
    """``(video path, frame index)`` of a frame's row path; ``(path, None)`` for anything else."""
    video, mark, index = path.rpartition(FRAME_MARK)
    return (video, int(index)) if mark and index.isdigit() else (path, None)


def frame_count(video: ImageFile) -> int:
    """The frame count the container declares (0 when unknown or unreadable): for progress bars only."""
    capture = cv2.VideoCapture(video.file)
    try:
        return max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT))) if capture.isOpened() else 0
    finally:
        capture.release()


class VideoFrames(IterableDataset):
    """Every frame of ``videos`` as items like :class:`~explainer.dataset.sources.DecodedImages`'s
    (``{"path", "file", "image" (3, S, S), "error"}``), skipping the row paths in ``done``."""

    def __init__(self, videos: list[ImageFile], preprocess: Preprocess, done: frozenset[str] = frozenset()) -> None:
        self.videos = videos
        self.preprocess = preprocess
        self.done = done

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        mine = self.videos if worker is None else self.videos[worker.id::worker.num_workers]
        for video in mine:
            if video.path not in self.done:  # an earlier run's error row for the whole video
                yield from self._frames(video)

    def _frames(self, video: ImageFile) -> Iterator[dict]:
        capture = cv2.VideoCapture(video.file)
        try:
            if not capture.isOpened():
                yield _error(video, "OpenCV cannot open it as a video")
                return
            declared = max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
            index = 0
            while True:
                path = frame_path(video.path, index)
                if path in self.done:
                    if not capture.grab():
                        break
                else:
                    ok, bgr = capture.read()
                    if not ok:
                        break
                    image, _ = self.preprocess(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                    yield source_item(path, video.file, image)
                index += 1
            if index == 0:
                yield _error(video, "no frame OpenCV could decode")
            elif index < declared and frame_path(video.path, index) not in self.done:
                # a file cut short: the frames before the cut are rows, the first missing one an error row
                # (under its frame path, so a resumed run does not report it twice)
                yield failed_item(frame_path(video.path, index), video.file,
                                  f"InputError: {video.file}: decoding stopped after {index} of the {declared} frames "
                                  "the container declares (a truncated or damaged file?)")
        finally:
            capture.release()


def _error(video: ImageFile, why: str) -> dict:
    """The error row of a whole video, under the video's own path."""
    return failed_item(video.path, video.file, f"InputError: {video.file}: {why}")
