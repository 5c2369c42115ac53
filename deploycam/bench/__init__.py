"""Benchmark cases shared by ``benchmarks/`` (pytest-benchmark) and ``deploycam bench``.

A :class:`Case` is one (model, batch, device, runtime, method); :class:`Workbench`
turns it into a zero-argument callable to time, building models, explainers,
exported graphs and peer-library objects once and caching them.
"""

from deploycam.bench.cases import Case, Unavailable, Workbench, all_cases

__all__ = ["Case", "Unavailable", "Workbench", "all_cases"]
