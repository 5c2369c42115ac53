"""Wall-clock medians and paired ratios for the demo, ``evaluate`` and ``bench``.

(benchmarks/ uses pytest-benchmark; these helpers serve the command line.)

A ratio to plain inference is only meaningful when both are timed under the same
conditions: :func:`paired_ms` times the case and its floor in alternating rounds, so
machine drift hits both alike, and reports the floor's spread, so a busy machine is
visible instead of printing a misleading ratio.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

#: Interquartile range of the floor's samples, relative to their median, above which a run is flagged.
NOISY_SPREAD = 0.25


def _time_ms(fn: Callable[[], object], sync: Callable[[], None] | None) -> float:
    if sync:
        sync()
    start = time.perf_counter()
    fn()
    if sync:
        sync()
    return (time.perf_counter() - start) * 1000.0


def _cuda_sync() -> None:
    import torch

    torch.cuda.synchronize()


def median_ms(fn: Callable[[], object], warmup: int = 3, repeat: int = 15, cuda: bool = False) -> float:
    """Median wall time of ``fn()`` in milliseconds, after ``warmup`` calls (CUDA synchronised when ``cuda``)."""
    sync = _cuda_sync if cuda else None
    for _ in range(warmup):
        fn()
    return statistics.median(_time_ms(fn, sync) for _ in range(max(1, repeat)))


def relative_spread(samples: list[float]) -> float:
    """Interquartile range over median (0 for fewer than 4 samples)."""
    if len(samples) < 4:
        return 0.0
    q1, _, q3 = statistics.quantiles(samples, n=4)
    return (q3 - q1) / statistics.median(samples)


@dataclass(frozen=True)
class Paired:
    """A case timed in alternating rounds with its floor (plain inference of the same runtime).

    Attributes:
        case_ms, floor_ms: medians over the same rounds, in ms.
        floor_spread: the floor's interquartile range over its median (0.05 on a quiet machine).
    """

    case_ms: float
    floor_ms: float
    floor_spread: float

    @property
    def ratio(self) -> float:
        """``case_ms / floor_ms``: both medians come from the same rounds."""
        return self.case_ms / self.floor_ms

    @property
    def noisy(self) -> bool:
        """True when the floor's spread says the machine was busy and the ratio is unreliable."""
        return self.floor_spread > NOISY_SPREAD


def paired_ms(fn: Callable[[], object], floor: Callable[[], object], rounds: int = 10, warmup: int = 2,
              cuda: bool = False) -> Paired:
    """Time ``fn`` and ``floor`` in ``rounds`` alternating rounds after ``warmup`` of each."""
    sync = _cuda_sync if cuda else None
    for _ in range(warmup):
        floor()
        fn()
    case_samples, floor_samples = [], []
    for _ in range(max(1, rounds)):
        floor_samples.append(_time_ms(floor, sync))
        case_samples.append(_time_ms(fn, sync))
    return Paired(statistics.median(case_samples), statistics.median(floor_samples), relative_spread(floor_samples))
