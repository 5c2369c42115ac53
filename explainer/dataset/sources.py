"""What a dataset run reads: image (and video) files from a folder (recursive) or a list file, decoded in
DataLoader workers (videos: :mod:`explainer.dataset.video_frames`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from explainer.errors import InputError
from explainer.imaging import IMAGE_SUFFIXES, VIDEO_SUFFIXES, Preprocess, load_image


@dataclass(frozen=True)
class ImageFile:
    """One input: ``path`` as stored in the results (relative to the source), ``file`` to open."""

    path: str
    file: str


def is_video(file: str) -> bool:
    """True for a video file name (by suffix: :data:`~explainer.imaging.VIDEO_SUFFIXES`)."""
    return file.lower().endswith(VIDEO_SUFFIXES)


def image_files(source: str | os.PathLike) -> list[ImageFile]:
    """The inputs of ``source``: a folder (every image and video file below it, by suffix, sorted; paths
    relative to it), a list file (one path per line, relative to the list's folder unless absolute; blank
    lines and ``#`` comments skipped; paths stored as written), or one video file (its name)."""
    source = os.fspath(source)
    if os.path.isfile(source) and is_video(source):
        return [ImageFile(os.path.basename(source), source)]
    if os.path.isdir(source):
        found = []
        for folder, subfolders, names in os.walk(source):
            subfolders.sort()
            for name in sorted(names):
                if name.lower().endswith(IMAGE_SUFFIXES + VIDEO_SUFFIXES):
                    file = os.path.join(folder, name)
                    found.append(ImageFile(os.path.relpath(file, source).replace(os.sep, "/"), file))
        return found
    if os.path.isfile(source):
        base = os.path.dirname(os.path.abspath(source))
        with open(source, encoding="utf-8") as handle:
            lines = [line.strip() for line in handle]
        return [ImageFile(line, line if os.path.isabs(line) else os.path.join(base, line))
                for line in lines if line and not line.startswith("#")]
    raise InputError(f"dataset source {source} is neither a folder nor a list file")


def source_item(path: str, file: str, image: torch.Tensor) -> dict:
    """One decoded input as every source yields it (what :func:`collate` reads): ``image`` ``(3, S, S)``."""
    return {"path": path, "file": file, "image": image, "error": ""}


def failed_item(path: str, file: str, why: str) -> dict:
    """An input that could not be read: it becomes a row with ``error`` set, not a stopped run."""
    return {"path": path, "file": file, "image": torch.empty(0), "error": why}


class DecodedImages(Dataset):
    """``ImageFile`` s decoded and preprocessed: item ``i`` is ``{"path", "image" (3, S, S) float32 or an
    empty tensor, "error" ("" or why the file could not be read)}``, so a bad file becomes a row, not a
    stopped run."""

    def __init__(self, files: list[ImageFile], preprocess: Preprocess) -> None:
        self.files = files
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        item = self.files[index]
        try:
            image, _ = self.preprocess(load_image(item.file))
            return source_item(item.path, item.file, image)
        except (OSError, InputError, ValueError) as exc:
            return failed_item(item.path, item.file, f"{type(exc).__name__}: {exc}")


def collate(items: list[dict]) -> dict:
    """A batch: the readable images stacked ``(B, 3, S, S)`` with their paths (and files), and the failures."""
    good = [i for i in items if not i["error"]]
    return {"images": torch.stack([i["image"] for i in good]) if good else torch.empty(0),
            "paths": [i["path"] for i in good], "files": [i["file"] for i in good],
            "failed": [(i["path"], i["error"]) for i in items if i["error"]]}


class TorchDatasetItems(Dataset):
    """Any ``torch.utils.data.Dataset`` as a source: item ``i`` is an image tensor ``(3, S, S)`` already
    preprocessed, or a tuple / dict whose first entry (or ``"image"``) is one; its ``path`` is ``str(i)``
    (or the item's ``"path"``). Items that fail to load become error rows."""

    def __init__(self, dataset: Dataset, indices: list[int]) -> None:
        self.dataset = dataset
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict:
        index = self.indices[position]
        try:
            item = self.dataset[index]
            path = str(index)
            if isinstance(item, dict):
                path = str(item.get("path", path))
                item = item["image"]
            elif isinstance(item, (tuple, list)):
                item = item[0]
            if not isinstance(item, torch.Tensor) or item.ndim != 3:
                raise InputError(f"dataset item {index} is not an image tensor (3, H, W): {type(item).__name__}")
            return source_item(path, "", item.float())
        except Exception as exc:  # noqa: BLE001 - a user's dataset may raise anything; it becomes a row
            return failed_item(str(index), "", f"{type(exc).__name__}: {exc}")
