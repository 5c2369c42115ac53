"""Peak memory of one case, measured in a fresh process.

CPU: the rise of the resident set over its level just before the case runs (Linux's
VmHWM, reset through /proc/self/clear_refs, so building models and exporting graphs
beforehand does not count). CUDA: ``torch.cuda.max_memory_allocated`` over the same span.

    python -m deploycam.bench.memory WORKDIR '{"model": ..., "batch": ..., ...}'   # prints JSON
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

import torch

from deploycam.bench.cases import Case, Unavailable, Workbench


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def measure_here(workdir: str, case: Case, runs: int = 3) -> dict:
    """Run ``case`` ``runs`` times in this process; ``{"peak_mb", "delta_mb"}`` (CPU) or CUDA bytes as MB."""
    fn = Workbench(workdir).callable(case)
    fn()  # first call: lazy allocations and caches, not the steady state
    gc.collect()
    if case.device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(runs):
            fn()
        peak = torch.cuda.max_memory_allocated()
        return {"peak_mb": peak / 2**20, "delta_mb": (peak - base) / 2**20, "kind": "cuda_max_allocated"}
    if not _reset_peak():
        raise Unavailable("peak RSS needs Linux's /proc/self/clear_refs")
    base = _status_kb("VmRSS") or 0
    for _ in range(runs):
        fn()
    peak = _status_kb("VmHWM") or 0
    return {"peak_mb": peak / 1024, "delta_mb": (peak - base) / 1024, "kind": "rss"}


def measure(workdir: str, case: Case, timeout: float = 900) -> dict | None:
    """:func:`measure_here` in a fresh subprocess; None when the case is unavailable there."""
    result = subprocess.run(
        [sys.executable, "-m", "deploycam.bench.memory", workdir, json.dumps(case.to_dict()),
         str(torch.get_num_threads())],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"memory measurement of {case.name} failed: {result.stderr[-2000:]}")
    data = json.loads(lines[-1])
    return None if "unavailable" in data else data


def main(argv: list[str]) -> int:
    workdir, spec = argv[0], json.loads(argv[1])
    if len(argv) > 2:
        torch.set_num_threads(int(argv[2]))
    try:
        print(json.dumps(measure_here(workdir, Case(**spec))))
    except Unavailable as exc:
        print(json.dumps({"unavailable": str(exc)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
