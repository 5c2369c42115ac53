"""pytest-benchmark settings for the deploycam benchmark suite.

    pytest benchmarks/ --benchmark-only                       # CPU (and CUDA when present)
    pytest benchmarks/ --benchmark-only --bench-models resnet50 --bench-batches 1 --no-bench-memory

Each case's median is divided by its floor (plain inference of the same runtime,
measured in the same session) and stored in ``extra_info``; a summary table with
ratios, peer speed-ups and peak memory is printed at the end.
"""

from __future__ import annotations

import tempfile

import pytest
import torch

from deploycam.bench.cases import MODELS, Workbench

_RESULTS: dict = {}


def pytest_addoption(parser):
    group = parser.getgroup("deploycam")
    group.addoption("--bench-models", nargs="+", default=list(MODELS), help="models to benchmark")
    group.addoption("--bench-batches", nargs="+", type=int, default=[1, 8], help="batch sizes")
    group.addoption("--bench-rounds", type=int, default=10, help="timed rounds per case")
    group.addoption("--no-bench-memory", action="store_true", help="skip the peak-memory subprocesses")


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        from deploycam.bench.cases import CUDA_RUNTIMES, EXPORTED_RUNTIMES, all_cases

        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        cases = all_cases(metafunc.config.getoption("--bench-models"), metafunc.config.getoption("--bench-batches"),
                          devices, runtimes=EXPORTED_RUNTIMES + CUDA_RUNTIMES)  # the CUDA ones on CUDA only
        metafunc.parametrize("case", cases, ids=[c.name for c in cases])


@pytest.fixture(scope="session")
def workbench():
    return Workbench(tempfile.mkdtemp(prefix="deploycam-bench-"))


@pytest.fixture(scope="session")
def results():
    return _RESULTS


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _RESULTS:
        return
    from deploycam.bench import report
    from deploycam.bench.runner import _relate, environment

    _relate(_RESULTS)
    env = environment()
    terminalreporter.section(f"deploycam: ratios to plain inference (torch {env['torch']}, {env['threads']} threads)")
    terminalreporter.write_line(report.table(list(_RESULTS.values())))
