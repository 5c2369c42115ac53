"""Explain datasets into Parquet rows: :func:`explain_dataset` (see :mod:`explainer.dataset.run`)."""

from explainer.dataset.parquet_parts import PartsWriter, read_results
from explainer.dataset.run import METRICS, DatasetRun, explain_dataset, schema
from explainer.dataset.sources import DecodedImages, ImageFile, image_files

__all__ = ["explain_dataset", "DatasetRun", "read_results", "PartsWriter", "image_files", "ImageFile",
           "DecodedImages", "METRICS", "schema"]
