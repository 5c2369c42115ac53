"""Latency (and peak memory) of every case: eager methods, TorchScript, ONNX Runtime, peers."""

from __future__ import annotations

import pytest
import torch

from deploycam.bench.cases import Unavailable
from deploycam.bench.runner import Result


def test_case(benchmark, case, workbench, results, request):
    try:
        fn = workbench.callable(case)
    except Unavailable as exc:
        results[case] = Result(case, unavailable=str(exc))
        pytest.skip(str(exc))
    rounds = request.config.getoption("--bench-rounds")
    benchmark.group = f"{case.model} b{case.batch} {case.device}"
    benchmark.extra_info.update(case.to_dict(), threads=torch.get_num_threads())
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=2, iterations=1)
    result = Result(case, median_ms=benchmark.stats.stats.median * 1000.0, samples=rounds)
    floor = results.get(case.floor)
    if floor is not None and floor.median_ms:
        benchmark.extra_info["floor_ms"] = floor.median_ms
        benchmark.extra_info["ratio_to_floor"] = result.median_ms / floor.median_ms
    if not request.config.getoption("--no-bench-memory") and case.device == "cpu":
        from deploycam.bench.memory import measure

        result.memory = measure(workbench.workdir, case)
        benchmark.extra_info["peak_rss_delta_mb"] = result.memory["delta_mb"] if result.memory else None
    elif case.device.startswith("cuda"):
        from deploycam.bench.memory import measure_here

        result.memory = measure_here(workbench.workdir, case)
        benchmark.extra_info["cuda_max_allocated_delta_mb"] = result.memory["delta_mb"]
    results[case] = result
