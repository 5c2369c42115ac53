"""deploycam.cli: outputs that never collide or silently overwrite, checks before the work, exit codes,
"did you mean", fast help, and truncated images reported and skipped."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from deploycam.cli import main
from explainer.overlay import save_png


@pytest.fixture()
def same_stems(tmp_path, photos):
    """cat.png, cat.jpg and sub/cat.png: three inputs, one stem."""
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    save_png(str(d / "cat.png"), photos["chelsea"])
    save_png(str(d / "cat.jpg"), photos["chelsea"])  # PNG data with a .jpg name still decodes
    save_png(str(d / "sub" / "cat.png"), photos["coffee"])
    return d


def explain(*args: str) -> int:
    return main(["explain", *args, "--model", "resnet18"])


def test_inputs_with_one_stem_write_distinct_files_and_the_count_is_on_disk(same_stems, tmp_path, capsys):
    out = tmp_path / "out"
    paths = [str(same_stems / "cat.png"), str(same_stems / "cat.jpg"), str(same_stems / "sub" / "cat.png")]
    assert explain(*paths, "--out", str(out)) == 0
    written = sorted(os.path.relpath(os.path.join(root, f), out) for root, _, files in os.walk(out) for f in files)
    assert len(written) == 3, written
    assert any(w.startswith("cat-png_") for w in written) and any(w.startswith("cat-jpg_") for w in written)
    assert any(w.startswith(os.path.join("sub", "cat_")) for w in written)
    assert "wrote 3 PNG(s)" in capsys.readouterr().out


def test_a_second_run_refuses_to_overwrite_unless_asked(same_stems, tmp_path, capsys):
    out = tmp_path / "out"
    image = str(same_stems / "cat.png")
    assert explain(image, "--out", str(out)) == 0
    before = {f: os.path.getmtime(out / f) for f in os.listdir(out)}
    capsys.readouterr()
    assert explain(image, "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "would be overwritten" in err and "--overwrite" in err
    assert {f: os.path.getmtime(out / f) for f in os.listdir(out)} == before
    assert explain(image, "--out", str(out), "--overwrite") == 0


@pytest.mark.parametrize("extra,message", [
    (["--device", "bogus"], "not a device name"),
    (["--device", "meta"], "deploycam runs on cpu or cuda"),
    (["--method", "gradcm"], "did you mean gradcam"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--alpha", "2"], "--alpha must be between 0 and 1"),
    (["--cuda-graphs"], "--cuda-graphs needs --device cuda"),
])
def test_bad_arguments_exit_2_with_one_line_and_write_nothing(same_stems, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert explain(str(same_stems / "cat.png"), "--out", str(out), *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cuda_that_is_not_there_is_refused_up_front(same_stems, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert explain(str(same_stems / "cat.png"), "--out", str(tmp_path / "o"), "--device", "cuda") == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_out_that_is_a_file_is_refused(same_stems, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert explain(str(same_stems / "cat.png"), "--out", str(tmp_path / "file")) == 2
    assert "is a file" in capsys.readouterr().err
    assert explain(str(same_stems / "cat.png"), "--out", str(tmp_path / "file" / "below")) == 2


def test_method_aliases_are_accepted(same_stems, tmp_path):
    out = tmp_path / "out"
    assert explain(str(same_stems / "cat.png"), "--out", str(out), "--method", "gradcampp") == 0
    assert all(f.endswith("_gradcam++.png") for f in os.listdir(out))


def test_truncated_jpeg_is_reported_and_skipped(tmp_path, photos, capsys):
    import cv2

    d = tmp_path / "in"
    d.mkdir()
    ok, data = cv2.imencode(".jpg", photos["chelsea"][:, :, ::-1])
    (d / "whole.jpg").write_bytes(data.tobytes())
    (d / "cut.jpg").write_bytes(data.tobytes()[: len(data) // 2])
    assert explain(str(d), "--out", str(tmp_path / "out")) == 1
    captured = capsys.readouterr()
    assert "cut.jpg is a truncated JPEG" in captured.err
    assert os.listdir(tmp_path / "out") and all(f.startswith("whole_") for f in os.listdir(tmp_path / "out"))


@pytest.mark.parametrize("extra,message", [
    (["--size", "0"], "--size must be at least 1"),
    (["--opset", "7"], "--opset must be between 18 and 23"),
    (["--static-batch", "0"], "--static-batch must be at least 1"),
])
def test_export_arguments_are_checked_first(tmp_path, capsys, extra, message):
    assert main(["export", "--out", str(tmp_path / "g.onnx"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "g.onnx").exists()


def test_export_into_an_unwritable_place_fails_before_the_work(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["export", "--out", str(tmp_path / "file" / "g.onnx")]) == 2
    err = capsys.readouterr().err
    assert "is a file" in err and "loading" not in err  # refused before the model was loaded


def test_export_shows_its_steps_and_a_static_batch(tmp_path, capsys):
    assert main(["export", "--out", str(tmp_path / "g.onnx"), "--model", "resnet18", "--size", "64",
                 "--static-batch", "3"]) == 0
    captured = capsys.readouterr()
    assert "tracing and writing the onnx graph" in captured.err and "comparing with eager" in captured.err
    assert "batch 3" in captured.out and "same predicted classes: True" in captured.out


def test_evaluate_runs_each_method_once(same_stems, tmp_path, capsys):
    assert main(["evaluate", str(same_stems / "cat.png"), "--model", "resnet18", "--method",
                 "gradcam,gradcam,gradcampp,gradcam++", "--steps", "2", "--repeat", "1",
                 "--out", str(tmp_path / "ev")]) == 0
    table = capsys.readouterr().out
    assert table.count("\ngradcam ") == 1 and table.count("\ngradcam++ ") == 1


def test_help_does_not_import_torch():
    code = ("import sys; from deploycam.cli import build_parser; p = build_parser(); "
            "p.format_help(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_methods_command_lists_the_registry(capsys):
    from explainer.methods import METHODS

    assert main(["methods"]) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in METHODS)


def test_output_stems_never_clash():
    from deploycam.cli.common import output_stems

    paths = ["a/cat.png", "a/cat.jpg", "a/sub/cat.png", "b/dog.png", "a/CAT.PNG", "a/cat.PNG"]
    stems = output_stems(paths)
    assert stems["b/dog.png"] == "dog"
    assert stems["a/sub/cat.png"] == os.path.join("sub", "cat")
    assert len(set(stems.values())) == len(paths)


def test_bench_table_says_how_ratios_are_made_and_flags_busy_rows():
    from deploycam.bench.cases import Case
    from deploycam.bench.report import table
    from deploycam.bench.runner import Result

    quiet = Result(Case("resnet50", 1, "cpu", "eager", "gradcam"), median_ms=10.0, samples=5, floor_ms=9.0,
                   ratio=10 / 9, floor_spread=0.02)
    busy = Result(Case("resnet50", 1, "cpu", "eager", "layercam"), median_ms=30.0, samples=5, floor_ms=9.5,
                  ratio=30 / 9.5, floor_spread=0.8)
    text = table([quiet, busy])
    assert "floor ms" in text and "same alternating rounds" in text
    assert "3.16x!" in text and "1.11x!" not in text and "1 row(s)" in text


def test_cuda_graphs_flag_is_checked_for_every_command(tmp_path, capsys):
    from deploycam.cli.args import check_cuda_graphs
    from explainer import InputError

    assert main(["explain-dataset", str(tmp_path), "--out", str(tmp_path / "r.parquet"), "--cuda-graphs"]) == 2
    assert "--cuda-graphs needs --device cuda" in capsys.readouterr().err
    import argparse

    for runtime, backend in (("g.pt", "onnxruntime"), ("g.pt2", "onnxruntime"), ("g.onnx", "openvino")):
        args = argparse.Namespace(cuda_graphs=True, runtime=runtime, backend=backend)
        with pytest.raises(InputError, match="has no CUDA graphs"):
            check_cuda_graphs(args, "cuda")
    check_cuda_graphs(argparse.Namespace(cuda_graphs=True, runtime="g.onnx", backend="onnxruntime"), "cuda")
