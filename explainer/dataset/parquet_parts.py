"""Crash-safe Parquet output: a folder of part files, each written and closed at once.

``results.parquet/part-00000.parquet``, ``part-00001.parquet``, ...: one part per group of rows as
results arrive, so a crash loses at most the group being written (a part file without its footer
is ignored on resume), and the folder reads as one table (``pyarrow.parquet.read_table(folder)``,
pandas, DuckDB, Spark, Ray's ``read_parquet``). A rerun with ``resume=True`` skips the paths
already in complete parts and adds new parts after them.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Mapping
from typing import Any

from explainer.errors import InputError


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise InputError("Parquet output needs pyarrow: pip install 'deploycam[scale]'") from exc
    return pa, pq


class PartsWriter:
    """Writes rows (dicts of one schema) to numbered part files in ``folder``."""

    def __init__(self, folder: str | os.PathLike, resume: bool = False,
                 identity: Mapping[str, Any] | None = None) -> None:
        """``identity``: what produces the rows (:mod:`explainer.dataset.run_identity`), stored in every part's
        schema metadata; resuming a folder whose parts hold another identity raises :class:`InputError`."""
        self.folder = os.fspath(folder)
        self.identity = identity
        parts = self.complete_parts()
        if os.path.exists(self.folder) and not os.path.isdir(self.folder):
            raise InputError(f"{self.folder} exists and is not a folder of Parquet parts")
        if parts and not resume:
            raise InputError(f"{self.folder} already holds {len(parts)} part(s); pass resume=True (--resume) to "
                             "continue that run, or another output")
        if parts and identity is not None:
            self._check_identity(parts, identity)
        os.makedirs(self.folder, exist_ok=True)
        self.done = self._paths(parts) if resume else set()
        numbers = [int(os.path.basename(p)[5:10]) for p in glob.glob(os.path.join(self.folder, "part-*.parquet"))]
        self.next_part = max(numbers, default=-1) + 1
        self.rows_written = 0

    def complete_parts(self) -> list[str]:
        """Part files whose footer is readable (a part cut off by a crash is not)."""
        _, pq = _pyarrow()
        complete = []
        for path in sorted(glob.glob(os.path.join(self.folder, "part-*.parquet"))):
            try:
                pq.read_metadata(path)
                complete.append(path)
            except Exception:  # noqa: BLE001 - a truncated file raises ArrowInvalid or OSError
                continue
        return complete

    def _check_identity(self, parts: list[str], identity: Mapping[str, Any]) -> None:
        """Every part's stored identity must be ``identity`` (parts of older versions, without one, pass)."""
        _, pq = _pyarrow()
        from explainer.dataset.run_identity import check_same_run, decode

        current = json.loads(json.dumps(identity))  # as it reads back: tuples become lists
        for stored in {json.dumps(decode(pq.read_schema(p).metadata), sort_keys=True) for p in parts}:
            check_same_run(self.folder, json.loads(stored), current)

    def _paths(self, parts: list[str]) -> set[str]:
        _, pq = _pyarrow()
        done: set[str] = set()
        for path in parts:
            done.update(pq.read_table(path, columns=["path"]).column("path").to_pylist())
        return done

    def write_table(self, rows: list[dict], schema=None) -> None:
        """One part with ``rows`` (``schema``: a ``pyarrow.Schema``; written to a temporary name, then
        renamed: a part is whole or absent)."""
        if not rows:
            return
        pa, pq = _pyarrow()
        if self.identity is not None:
            from explainer.dataset.run_identity import encode

            schema = (schema or pa.Table.from_pylist(rows).schema).with_metadata(encode(self.identity))
        table = pa.Table.from_pylist(rows, schema=schema)
        final = os.path.join(self.folder, f"part-{self.next_part:05d}.parquet")
        temporary = final + ".writing"
        pq.write_table(table, temporary)
        os.replace(temporary, final)
        self.next_part += 1
        self.rows_written += len(rows)


def read_results(folder: str | os.PathLike):
    """The whole results table (``pyarrow.Table``) of a folder of parts."""
    _, pq = _pyarrow()
    return pq.read_table(os.fspath(folder))
