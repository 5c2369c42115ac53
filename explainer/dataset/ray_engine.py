"""The Ray engine of :func:`explainer.dataset.explain_dataset`: the same rows from an actor pool on Ray Data.

The file list becomes a Ray dataset; ``map_batches`` runs an actor pool of explainers (each actor
builds its own from the caller's zero-argument factory, decodes its batch's files and returns the
rows as an Arrow table with the run's schema); the driver streams the results into the same
crash-safe Parquet parts as the local engine, so ``resume`` and the output layout do not depend on
the engine. Videos go one per actor call after the images (their frames decode in order), the
actor yielding a table per ``batch_size`` frames and skipping the frames a resumed run has done. Connects to ``ray_address`` / ``RAY_ADDRESS`` when given, else starts a local cluster
(and stops it at the end); a cluster the caller already started is reused and left running.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from explainer.dataset.parquet_parts import _pyarrow
from explainer.dataset.run import RowOptions, batch_rows, schema
from explainer.dataset.sources import DecodedImages, ImageFile, collate, is_video
from explainer.dataset.video_frames import VideoFrames
from explainer.errors import InputError
from explainer.imaging import Preprocess


class ExplainActor:
    """One Ray actor: an explainer built once, then ``{"path", "file"}`` batches -> row tables (one per
    batch of images; one per ``batch_size`` frames of each video)."""

    def __init__(self, factory: Callable[[], Any], preprocess: Preprocess, options: RowOptions, batch_size: int,
                 done_frames: frozenset[str] = frozenset()) -> None:
        self.explainer = factory()
        self.preprocess = preprocess
        self.options = options
        self.batch_size = batch_size
        self.done_frames = done_frames

    def __call__(self, batch: dict) -> Iterator[Any]:
        files = [ImageFile(str(p), str(f)) for p, f in zip(batch["path"], batch["file"])]
        images = [f for f in files if not is_video(f.file)]
        if images:
            decoded = DecodedImages(images, self.preprocess)
            yield self._table(collate([decoded[i] for i in range(len(images))]))
        for video in (f for f in files if is_video(f.file)):
            chunk: list[dict] = []
            for item in VideoFrames([video], self.preprocess, self.done_frames):
                chunk.append(item)
                if len(chunk) == self.batch_size:
                    yield self._table(collate(chunk))
                    chunk = []
            if chunk:
                yield self._table(collate(chunk))

    def _table(self, collated: dict) -> Any:
        """The batch's rows as an Arrow table, with its image and error counts in two extra columns."""
        pa, _ = _pyarrow()
        rows, images, errors = batch_rows(self.explainer, collated, self.options)
        table = pa.Table.from_pylist(rows, schema=schema(self.options.metrics))
        return table.append_column("_images", pa.array([images] + [0] * (len(rows) - 1), pa.int32())) \
                    .append_column("_errors", pa.array([errors] + [0] * (len(rows) - 1), pa.int32()))


def _takes_no_arguments(factory: Any) -> bool:
    """True for a zero-argument callable (a factory), False for an explainer (called with images)."""
    import inspect

    try:
        inspect.signature(factory).bind()
        return True
    except (TypeError, ValueError):
        return False


def ray_batches(factory: Callable[[], Any], files: list[ImageFile], preprocess: Preprocess, batch_size: int,
                options: RowOptions, actors: int | None = None, address: str | None = None,
                done_frames: frozenset[str] = frozenset()) -> Iterator[tuple[list[dict], int, int]]:
    """``(rows, images, errors)`` per finished batch, computed by a Ray actor pool: the images in batches
    of ``batch_size``, then the videos one per call (``done_frames``: frames a resumed run skips)."""
    if not _takes_no_arguments(factory):
        raise InputError("engine='ray' needs a zero-argument function that builds the explainer (each actor "
                         "calls it), e.g. lambda: Explainer(load_model('resnet50').model, 'layer4')")
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise InputError("engine='ray' needs Ray: pip install 'deploycam[scale]'") from exc
    if not files:
        return
    started = not ray.is_initialized()
    if started:
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or None, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    try:
        resources = ray.cluster_resources()
        gpus = 1 if resources.get("GPU", 0) >= 1 else 0
        size = actors or max(1, int(resources.get("GPU", 0)) if gpus else int(resources.get("CPU", 1)))
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        images = [f for f in files if not is_video(f.file)]
        videos = [f for f in files if is_video(f.file)]
        for items, per_call in ((images, batch_size), (videos, 1)):  # one video per call: videos spread over actors
            if not items:
                continue
            dataset = ray.data.from_items([{"path": f.path, "file": f.file} for f in items])
            results = dataset.map_batches(
                ExplainActor, fn_constructor_args=(factory, preprocess, options, batch_size, done_frames),
                batch_size=per_call, compute=ray.data.ActorPoolStrategy(size=min(size, len(items))),
                num_gpus=gpus, batch_format="numpy")
            table: Any
            for table in results.iter_batches(batch_format="pyarrow", batch_size=None):
                images_done = int(sum(table.column("_images").to_pylist()))
                errors = int(sum(table.column("_errors").to_pylist()))
                yield table.drop_columns(["_images", "_errors"]).to_pylist(), images_done, errors
    finally:
        if started:
            ray.shutdown()
