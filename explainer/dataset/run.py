"""Explain a whole dataset into Parquet rows: ``explain_dataset(source, explainer, "results.parquet")``.

Images are decoded and preprocessed in DataLoader workers, explained in batches (the eager
:class:`~explainer.Explainer` or an exported graph's runtime from :func:`export.load`: both have
the same call), and written as rows to a folder of Parquet parts (:mod:`explainer.dataset.parquet_parts`)
as results arrive. One row per image and target:

    path         str      the image's path relative to the source (as written in a list file); a video
                          frame's is the video's path + "#frame=N" (0-based)
    target       int64    the explained class (-1 for target callables; null for unreadable files)
    label        str      its name (ImageNet names for 1000-class models, else "class k")
    probability  float32  softmax(logits)[target]
    method, layer str
    cam          list<float32>  the map, row-major: at feature resolution for the eager explainer
                            (``Explanation.raw``, before normalisation), the normalised input-size
                            map for exported graphs (they output only that)
    cam_shape    list<int32>    (h, w) of ``cam``
    error        str      "" or why the file could not be read (its other fields null)
    deletion, insertion  float64  optional faithfulness metrics (explainer.metrics; eager only)
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset
from tqdm import tqdm

from explainer.dataset.parquet_parts import PartsWriter, _pyarrow
from explainer.dataset.sources import DecodedImages, TorchDatasetItems, collate, image_files, is_video
from explainer.dataset.video_frames import VideoFrames, frame_count, split_frame_path
from explainer.errors import InputError
from explainer.imaging import Preprocess
from explainer.labels import label_of

METRICS = ("deletion", "insertion")


@dataclass(frozen=True)
class DatasetRun:
    """What a run did: ``rows`` written (``errors`` of them for unreadable files), ``skipped`` images
    already in the output (resume), ``images`` explained, ``seconds`` and ``images_per_second``."""

    out: str
    rows: int
    errors: int
    skipped: int
    images: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def schema(metrics: Sequence[str] = ()):
    """The rows' Arrow schema (every part has it, so the folder reads as one table)."""
    pa, _ = _pyarrow()
    fields = [("path", pa.string()), ("target", pa.int64()), ("label", pa.string()),
              ("probability", pa.float32()), ("method", pa.string()), ("layer", pa.string()),
              ("cam", pa.list_(pa.float32())), ("cam_shape", pa.list_(pa.int32())), ("error", pa.string())]
    return pa.schema(fields + [(m, pa.float64()) for m in metrics])


ENGINES = ("local", "ray")


def explain_dataset(source: str | os.PathLike | TorchDataset, explainer: Any, out: str | os.PathLike, *,
                    preprocess: Preprocess | None = None, targets: int | None = None, topk: int | None = None,
                    batch_size: int = 16, workers: int = 0, resume: bool = False, metrics: Sequence[str] = (),
                    rows_per_part: int = 256, progress: bool = True, engine: str = "local",
                    actors: int | None = None, ray_address: str | None = None,
                    overlays: str | os.PathLike | None = None) -> DatasetRun:
    """Explain every image of ``source`` (a folder, recursively, a list file or a video file: video files give
    a row per frame, see :mod:`explainer.dataset.video_frames`; or any torch ``Dataset``
    whose items are preprocessed image tensors ``(3, S, S)``, alone or first in a tuple, or ``{"image",
    "path"}`` dicts: ``path`` is the index as text unless given) into ``out``, a folder of Parquet parts
    (see the module docstring for the columns).

    Args:
        explainer: an :class:`~explainer.Explainer` or an exported graph's runtime (``export.load``);
            for ``engine="ray"`` a zero-argument function that builds one (it runs in each actor).
        preprocess: how images become the model's input (default: ImageNet's 224 px recipe).
        targets / topk: None (each image's top class), one class for every image, or the ``topk`` best.
        batch_size: images per explainer call; ``workers``: DataLoader worker processes that decode (local).
        resume: continue a run whose output exists, skipping the paths already written.
        metrics: any of ``"deletion"``, ``"insertion"`` (eager explainers; 20 model runs per image each).
        rows_per_part: rows per Parquet part (a crash loses at most the part being assembled).
        engine: ``"local"`` (this process, DataLoader workers) or ``"ray"`` (Ray Data: an actor pool of
            ``actors`` explainers, default the cluster's CPUs, one GPU each where the cluster has GPUs;
            connects to ``ray_address`` or ``RAY_ADDRESS``, else starts a local cluster). Rows are the same.
        overlays: a folder for one overlay PNG per image and target (``{path}_{target}_{method}.png``,
            the source's sub-folders kept); written by whichever process explains the image.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise InputError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    if engine not in ENGINES:
        raise InputError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "local" and metrics and _model_of(explainer) is None:
        raise InputError("metrics need the model: pass an eager Explainer, not an exported graph's runtime")
    for name, value in (("batch_size", batch_size), ("rows_per_part", rows_per_part)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be an int >= 1, got {value!r}")
    preprocess = preprocess or Preprocess()
    writer = PartsWriter(out, resume=resume, identity=_identity(explainer, engine, targets, topk, preprocess, metrics))
    options = RowOptions(targets, topk, tuple(metrics), None if overlays is None else os.path.abspath(overlays),
                         preprocess)
    if isinstance(source, TorchDataset):
        if engine == "ray":
            raise InputError("a torch Dataset source runs on the local engine (Ray reads files); give a folder or "
                             "list file for Ray")
        indices = [i for i in range(len(source)) if str(i) not in writer.done]  # type: ignore[arg-type]
        loader = DataLoader(TorchDatasetItems(source, indices), batch_size=batch_size, num_workers=workers,
                            collate_fn=collate)
        total, todo_count = len(source), len(indices)  # type: ignore[arg-type]
        batches: Iterator[tuple[list[dict], int, int]] = (batch_rows(explainer, b, options) for b in loader)
        return _write(batches, writer, metrics, rows_per_part, todo_count, total - todo_count, progress)
    files = image_files(source)
    all_videos = [f for f in files if is_video(f.file)]
    videos = [f for f in all_videos if f.path not in writer.done]  # a video's own path is done as an error row
    files = [f for f in files if not is_video(f.file)]
    todo = [f for f in files if f.path not in writer.done]
    names = {v.path for v in videos}
    done_frames = frozenset(p for p in writer.done if split_frame_path(p)[0] in names)
    frames = max(0, sum(frame_count(v) for v in videos) - len(done_frames))  # for the progress bar only
    skipped = len(files) - len(todo) + len(done_frames) + len(all_videos) - len(videos)
    if engine == "ray":
        from explainer.dataset.ray_engine import ray_batches

        batches = ray_batches(explainer, todo + videos, preprocess, batch_size, options, actors, ray_address,
                              done_frames)
    else:
        loader = DataLoader(DecodedImages(todo, preprocess), batch_size=batch_size, num_workers=workers,
                            collate_fn=collate)
        frame_loader = DataLoader(VideoFrames(videos, preprocess, done_frames), batch_size=batch_size,
                                  num_workers=min(workers, len(videos)), collate_fn=collate)
        batches = (batch_rows(explainer, batch, options) for batch in itertools.chain(loader, frame_loader))
    return _write(batches, writer, metrics, rows_per_part, len(todo) + frames, skipped, progress)


def _identity(explainer: Any, engine: str, targets: int | None, topk: int | None, preprocess: Preprocess,
              metrics: Sequence[str]) -> dict[str, Any]:
    """The run's identity (:mod:`explainer.dataset.run_identity`); Ray's explainer factory is called once here
    for it (each actor builds its own)."""
    from explainer.dataset.ray_engine import _takes_no_arguments
    from explainer.dataset.run_identity import run_identity

    built = explainer() if engine == "ray" and _takes_no_arguments(explainer) else explainer
    return run_identity(built, targets=targets, topk=topk, preprocess=preprocess, metrics=tuple(metrics))


def _write(batches: Iterator[tuple[list[dict], int, int]], writer: PartsWriter, metrics: Sequence[str],
           rows_per_part: int, todo: int, skipped: int, progress: bool) -> DatasetRun:
    """Drain ``batches`` of rows into ``writer``'s parts, with a progress bar; the run's summary."""
    row_schema = schema(metrics)
    pending: list[dict] = []
    errors = images = 0
    start = time.perf_counter()
    with tqdm(total=todo, unit="img", desc="explain-dataset", disable=None if progress else True) as bar:
        for rows, explained, failed in batches:
            pending += rows
            images += explained
            errors += failed
            while len(pending) >= rows_per_part:
                writer.write_table(pending[:rows_per_part], row_schema)
                pending = pending[rows_per_part:]
            bar.update(explained + failed)
    writer.write_table(pending, row_schema)
    return DatasetRun(writer.folder, writer.rows_written, errors, skipped, images, time.perf_counter() - start)


@dataclass(frozen=True)
class RowOptions:
    """What each image's rows hold: the targets (or ``topk``) and the metric columns."""

    targets: int | None = None
    topk: int | None = None
    metrics: tuple[str, ...] = ()
    overlays: str | None = None  # a folder for overlay PNGs ({path without suffix}_{target}_{method}.png)
    preprocess: Preprocess | None = None  # for the overlays' pictures


def batch_rows(explainer: Any, batch: dict, options: RowOptions) -> tuple[list[dict], int, int]:
    """``(rows, images explained, unreadable files)`` of one collated batch (:func:`~explainer.dataset.sources.collate`)."""
    rows = [_error_row(path, error, options.metrics) for path, error in batch["failed"]]
    if batch["paths"]:
        result = (explainer(batch["images"], options.targets, topk=options.topk) if options.topk is not None
                  else explainer(batch["images"], options.targets))
        rows += _rows(explainer, result, batch["images"], batch["paths"], options.metrics)
        if options.overlays:
            _write_overlays(result, batch["paths"], batch["images"], options)
    return rows, len(batch["paths"]), len(batch["failed"])


def _write_overlays(result: Any, paths: list[str], images: Tensor, options: RowOptions) -> None:
    """One overlay PNG per image and target under ``options.overlays``, mirroring the source's folders,
    drawn on the picture the model saw (the batch's tensors, normalisation undone: no second decode)."""
    from explainer.overlay import overlay, save_png

    preprocess = options.preprocess or Preprocess()
    cams = result.cams if result.cams.ndim == 4 else result.cams[:, None]
    chosen = result.targets if result.targets.ndim == 2 else result.targets[:, None]
    assert options.overlays is not None
    for i, path in enumerate(paths):
        view = preprocess.picture(images[i])
        video, frame = split_frame_path(path)  # a video's frames: clip_frame000012
        stem = os.path.join(options.overlays, os.path.splitext(video.lstrip("/"))[0]
                            + ("" if frame is None else f"_frame{frame:06d}"))
        os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
        for k in range(chosen.shape[1]):
            save_png(f"{stem}_{int(chosen[i, k])}_{result.method}.png", overlay(view, cams[i, k].float().cpu().numpy()))


def _error_row(path: str, error: str, metrics: Sequence[str]) -> dict:
    return {"path": path, "target": None, "label": None, "probability": None, "method": None, "layer": None,
            "cam": None, "cam_shape": None, "error": error} | {m: None for m in metrics}


def _rows(explainer: Any, result: Any, images: torch.Tensor, paths: list[str], metrics: Sequence[str]) -> list[dict]:
    maps = result.raw if result.raw is not None else result.cams  # (N, [K,] h, w)
    chosen = result.targets if result.targets.ndim == 2 else result.targets[:, None]  # (N, K)
    maps = maps if maps.ndim == 4 else maps[:, None]
    probabilities = result.logits.detach().float().softmax(dim=1)
    scores = {m: _metric(explainer, m, images, result.cams, chosen) for m in metrics}
    rows = []
    num_classes = int(result.logits.shape[1])
    for i, path in enumerate(paths):
        for k in range(chosen.shape[1]):
            target = int(chosen[i, k])
            cam = maps[i, k].detach().float().cpu().numpy()
            rows.append({
                "path": path, "target": target, "label": label_of(target, num_classes) if target >= 0 else None,
                "probability": float(probabilities[i, target]) if target >= 0 else None,
                "method": result.method, "layer": result.layer,
                "cam": cam.ravel().astype(np.float32).tolist(), "cam_shape": list(cam.shape), "error": "",
            } | {m: float(scores[m][i, k]) for m in metrics})
    return rows


def _metric(explainer: Any, name: str, images: torch.Tensor, cams: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """``(N, K)`` deletion or insertion AUC of each image's maps."""
    from explainer.metrics import deletion_auc, insertion_auc

    model = _model_of(explainer)
    fn = deletion_auc if name == "deletion" else insertion_auc
    cams = cams if cams.ndim == 4 else cams[:, None]
    with torch.no_grad():
        return torch.stack([fn(model, images, cams[:, k], chosen[:, k]) for k in range(chosen.shape[1])], dim=1)


def _model_of(explainer: Any):
    """The image -> logits callable of an eager explainer (None for exported graphs' runtimes)."""
    explainer = getattr(explainer, "layer_explainers", [explainer])[0]  # multi-layer: any layer's split
    model = getattr(explainer, "model", None)
    if model is not None:
        return model
    if not hasattr(explainer, "_parts"):
        return None
    backbone, head = explainer._parts()

    def whole(x: torch.Tensor) -> torch.Tensor:
        from explainer.pipeline import unpack_backbone

        a, skips = unpack_backbone(backbone(x))
        return explainer._select(head(a, *skips))
    return whole
