"""deploycam.bench: the benchmark machinery (not the timings: tests never assert wall-clock times)."""

from __future__ import annotations

import json
import os

import pytest

from deploycam.bench.cases import CUDA_RUNTIMES, EAGER_METHODS, EXPORTED_RUNTIMES, MODELS, PEERS, Case, all_cases
from deploycam.bench.report import table, write_json, write_png
from deploycam.bench.runner import Result, _relate
from deploycam.cli import main


def test_matrix_has_floors_for_every_case():
    cases = all_cases()
    per_group = 1 + len(EAGER_METHODS) + 2 * len(EXPORTED_RUNTIMES) + sum(len(m) for m in PEERS.values())
    assert len(cases) == len(MODELS) * 2 * per_group
    assert all(c.floor in cases for c in cases)
    assert Case("resnet50", 1, "cpu", "captum", "gradcam").floor == Case("resnet50", 1, "cpu", "eager", "plain")
    assert Case("resnet50", 1, "cpu", "onnxruntime", "gradcam").floor.runtime == "onnxruntime"
    assert Case("resnet50", 1, "cpu", "openvino", "gradcam").floor.runtime == "openvino"
    assert {c.runtime for c in all_cases(runtimes=["aoti"])} == {"eager", "aoti", *PEERS}


def test_cuda_graph_runtimes_are_cases_on_cuda_only():
    runtimes = EXPORTED_RUNTIMES + CUDA_RUNTIMES
    assert not {c.runtime for c in all_cases(runtimes=runtimes)} & set(CUDA_RUNTIMES)  # CPU: none
    cuda = all_cases(["resnet50"], [1], ["cuda"], peers=False, runtimes=runtimes)
    graphed = [c for c in cuda if c.runtime == "eager-graphs"]
    assert [c.method for c in graphed] == ["gradcam"]  # compared with eager inference: no plain row of its own
    assert graphed[0].floor == Case("resnet50", 1, "cuda", "eager", "plain")
    ort = [c for c in cuda if c.runtime == "onnxruntime-graphs"]
    assert [c.method for c in ort] == ["plain", "gradcam"] and ort[1].floor == ort[0]
    assert all(c.floor in cuda for c in cuda)


def test_cuda_graph_runtimes_are_unavailable_on_the_cpu(tmp_path):
    from deploycam.bench.cases import Unavailable, Workbench

    bench = Workbench(str(tmp_path))
    for runtime in CUDA_RUNTIMES:
        with pytest.raises(Unavailable, match="CUDA"):  # before any model is built
            getattr(bench, "_" + runtime.replace("-", "_"))(Case("resnet50", 1, "cpu", runtime, "gradcam"),
                                                            None, "layer4", None, None)


def fake_results():
    def r(runtime, method, ms, mem):
        return Result(Case("m", 1, "cpu", runtime, method), median_ms=ms, memory={"delta_mb": mem, "peak_mb": mem + 500})

    results = [r("eager", "plain", 10.0, 100.0), r("eager", "gradcam", 11.0, 110.0),
               r("pytorch-grad-cam", "gradcam", 33.0, 800.0), r("onnxruntime", "plain", 5.0, 50.0),
               r("onnxruntime", "gradcam", 5.5, 55.0),
               Result(Case("m", 1, "cpu", "torchcam", "gradcam"), unavailable="torchcam is not installed")]
    related = {x.case: x for x in results}
    _relate(related)
    return results


def test_ratios_speedups_and_memory_are_related_within_one_run():
    results = {r.case.name: r for r in fake_results()}
    ours = results["m/b1/cpu/eager/gradcam"]
    assert ours.ratio == pytest.approx(1.1) and ours.memory_ratio == pytest.approx(1.1)
    assert ours.speedups == {"pytorch-grad-cam": pytest.approx(3.0)}
    assert results["m/b1/cpu/onnxruntime/gradcam"].ratio == pytest.approx(1.1)
    assert results["m/b1/cpu/pytorch-grad-cam/gradcam"].ratio == pytest.approx(3.3)


def test_report_files(tmp_path):
    results = fake_results()
    text = table(results)
    assert "1.10x" in text and "pytorch-grad-cam 3.0x" in text and "torchcam is not installed" in text
    write_json(str(tmp_path / "bench.json"), results, {"torch": "x", "threads": 2})
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["results"][1]["ratio"] == pytest.approx(1.1)
    write_png(str(tmp_path / "bench.png"), results, {"torch": "x", "threads": 2})
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_bench_cli_runs_one_model_end_to_end(tmp_path, capsys):
    code = main(["bench", "--models", "efficientnet-lite0", "--batches", "1", "--rounds", "1", "--no-peers",
                 "--runtimes", "onnxruntime", "openvino", "opencv", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "efficientnet-lite0/b1/cpu/onnxruntime/gradcam" in out and "/opencv/gradcam" in out
    data = json.loads((tmp_path / "bench.json").read_text())
    eager = next(r for r in data["results"] if r["name"] == "efficientnet-lite0/b1/cpu/eager/gradcam")
    assert eager["ratio"] > 0 and eager["memory"]["delta_mb"] >= 0
    assert os.path.exists(tmp_path / "bench.png")


def test_cli_model_list_matches_the_bench_cases():
    from deploycam.bench.cases import MODELS
    from deploycam.cli.bench_cmd import BENCH_MODELS

    assert tuple(MODELS) == BENCH_MODELS
    from deploycam.cli.bench_cmd import CUDA_RUNTIMES as CLI_CUDA_RUNTIMES
    from deploycam.cli.bench_cmd import EXPORTED_RUNTIMES as CLI_RUNTIMES

    assert CLI_RUNTIMES == EXPORTED_RUNTIMES and CLI_CUDA_RUNTIMES == CUDA_RUNTIMES
