"""Time cases, attach floors (plain inference of the same run and runtime), peers and memory."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch

from deploycam.bench.cases import OWN_RUNTIMES, Case, Unavailable, Workbench
from explainer.timing import median_ms, paired_ms


@dataclass
class Result:
    """One timed case. ``ratio`` is ``median_ms / floor_ms``, both medians of the same alternating
    rounds (``floor_ms`` is the paired floor, not the floor row's own median); ``floor_spread`` is the
    floor's interquartile range over its median in those rounds; ``memory`` in MB."""

    case: Case
    median_ms: float | None = None
    samples: int = 0
    floor_ms: float | None = None
    ratio: float | None = None
    floor_spread: float | None = None
    memory: dict | None = None
    memory_ratio: float | None = None
    speedups: dict[str, float] = field(default_factory=dict)  # peer runtime -> peer_ms / ours
    unavailable: str | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["case"] = self.case.to_dict()
        data["name"] = self.case.name
        return data


def run_cases(cases: Iterable[Case], workbench: Workbench, rounds: int = 10, warmup: int = 2,
              memory: bool = False, progress: Callable[[str], None] | None = None) -> list[Result]:
    """Time every case against its floor (interleaved rounds), then fill peer speed-ups and memory.

    Each case's ``ratio`` is its median over the median of its floor timed in alternating
    rounds with it (machine drift and thermal or cache effects then hit both alike); the
    floor's own row reports the median of its first standalone timing.
    """
    results: dict[Case, Result] = {}
    floors: dict[Case, Callable[[], object]] = {}
    for case in cases:
        if progress:
            progress(case.name)
        result = Result(case)
        try:
            fn = workbench.callable(case)
            if case.method == "plain":
                floors[case] = fn
                result.median_ms = median_ms(fn, warmup, rounds)
            else:
                floor = floors.get(case.floor) or workbench.callable(case.floor)
                paired = paired_ms(fn, floor, rounds, warmup)
                result.median_ms, result.floor_ms, result.ratio = paired.case_ms, paired.floor_ms, paired.ratio
                result.floor_spread = paired.floor_spread
            result.samples = rounds
            if memory:
                from deploycam.bench.memory import measure

                result.memory = measure(workbench.workdir, case)
        except Unavailable as exc:
            result.unavailable = str(exc)
        except Exception as exc:  # noqa: BLE001 - one broken case must not end the whole run
            result.median_ms = None
            result.unavailable = f"failed: {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:160]}"
        results[case] = result
    _relate(results)
    return list(results.values())


def _relate(results: dict[Case, Result]) -> None:
    for case, result in results.items():
        floor = results.get(case.floor)
        if floor and floor.median_ms and result.median_ms and result.ratio is None:
            result.floor_ms = floor.median_ms
            result.ratio = result.median_ms / floor.median_ms
        if floor and floor.memory and result.memory and floor.memory["delta_mb"] > 0:
            result.memory_ratio = result.memory["delta_mb"] / floor.memory["delta_mb"]
    for case, result in results.items():
        if case.runtime == "eager" and case.method != "plain" and result.median_ms:
            for other, peer in results.items():
                same = (other.model, other.batch, other.device, other.method) == (case.model, case.batch, case.device,
                                                                                  case.method)
                if same and other.runtime not in OWN_RUNTIMES and peer.ratio \
                        and result.ratio:
                    # both against the same eager floor, each timed interleaved with it
                    result.speedups[other.runtime] = peer.ratio / result.ratio


def environment() -> dict:
    """What the numbers were measured on."""
    import platform

    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine()}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpu:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in cpu if line.startswith("model name")), info["cpu"])
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info
