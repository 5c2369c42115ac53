"""Wall-clock medians for the demo and the CLI (benchmarks/ uses pytest-benchmark instead)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_ms(fn: Callable[[], object], warmup: int = 3, repeat: int = 15, cuda: bool = False) -> float:
    """Median wall time of ``fn()`` in milliseconds, after ``warmup`` calls (CUDA synchronised when ``cuda``)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(samples)
