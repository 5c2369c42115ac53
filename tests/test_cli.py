"""deploycam.cli: the deploycam command line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import cv2
import pytest

from deploycam.cli import main
from explainer.overlay import save_png


@pytest.fixture()
def image_dir(tmp_path, photos):
    d = tmp_path / "imgs"
    d.mkdir()
    save_png(str(d / "cat.png"), photos["chelsea"])
    save_png(str(d / "coffee.jpg"), photos["coffee"])
    (d / "broken.png").write_bytes(b"not an image")
    (d / "notes.txt").write_text("ignored: not an image suffix")
    return d


def read_png(path):
    img = cv2.imread(str(path))
    assert img is not None, f"{path} is not a readable PNG"
    return img


def test_explain_writes_overlays_and_reports_bad_files(image_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["explain", str(image_dir), str(tmp_path / "missing.png"), "--out", str(out), "--batch-size", "2"])
    captured = capsys.readouterr()
    assert code == 1  # two inputs failed, the rest went on
    assert "broken.png is not an image" in captured.err and "missing.png" in captured.err
    assert "285 Egyptian cat" in captured.out and "967 espresso" in captured.out
    files = sorted(os.listdir(out))
    assert files == ["cat_285_gradcam.png", "coffee_967_gradcam.png"]
    for f in files:
        assert read_png(out / f).shape == (224, 224, 3)


def test_explain_topk_writes_a_grid(image_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["explain", str(image_dir / "cat.png"), "--topk", "2", "--method", "layercam", "--out", str(out),
                 "--resize", "squash", "--colormap", "turbo"])
    assert code == 0
    files = sorted(os.listdir(out))
    assert len(files) == 3 and "cat_grid_layercam.png" in files
    assert read_png(out / "cat_grid_layercam.png").shape[1] == 224 * 3


def test_explain_given_classes(image_dir, tmp_path):
    out = tmp_path / "out"
    assert main(["explain", str(image_dir / "coffee.jpg"), "--class", "967", "504", "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["coffee_504_gradcam.png", "coffee_967_gradcam.png", "coffee_grid_gradcam.png"]


def test_explain_with_unknown_layer_is_a_clean_error(image_dir, tmp_path, capsys):
    code = main(["explain", str(image_dir / "cat.png"), "--layer", "_conv_hed", "--out", str(tmp_path)])
    assert code == 2
    assert "_conv_head" in capsys.readouterr().err


def test_layers_lists_layer4_for_resnet50(capsys):
    assert main(["layers", "--model", "resnet50"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "layer4" in rows and "1x2048x7x7" in rows["layer4"] and "<- default" in rows["layer4"]


def test_layers_nodes_shows_repeated_calls(capsys):
    assert main(["layers", "--nodes"]) == 0
    assert "_swish_1" in capsys.readouterr().out


def test_models_lists_torchvision_and_lite(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet-lite0" in out and "resnet50" in out


def test_demo_writes_pictures_and_latency(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    assert "plain inference" in out and "gradcam" in out and "285 Egyptian cat" in out
    assert (tmp_path / "side_by_side_gradcam.png").exists()
    assert read_png(tmp_path / "side_by_side_gradcam.png").shape[1] == 448 * 3  # input, cat map, espresso map


@pytest.mark.skipif(shutil.which("deploycam") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "deploycam")), reason="console script not installed")
def test_console_script_is_installed():
    exe = shutil.which("deploycam") or os.path.join(os.path.dirname(sys.executable), "deploycam")
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "explain" in result.stdout and "layers" in result.stdout


def test_explain_aug_smooth(image_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["explain", str(image_dir / "cat.png"), "--aug-smooth", "--eigen-smooth", "--out", str(out)]) == 0
    assert os.listdir(out) == ["cat_285_gradcam.png"]


def test_evaluate_prints_metrics_per_method(image_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", str(image_dir / "cat.png"), str(image_dir / "coffee.jpg"), "--method",
                 "gradcam,layercam", "--steps", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "deletion" in printed and "gradcam " in printed and "layercam" in printed
    import json

    data = json.loads((out / "evaluate.json").read_text())
    assert set(data["results"]) == {"gradcam", "layercam"}
    assert 0.0 <= data["results"]["gradcam"]["deletion"] <= 1.0
    assert (out / "evaluate.png").exists()


def test_evaluate_with_road(image_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", str(image_dir / "cat.png"), "--method", "gradcam", "--steps", "2", "--road",
                 "--out", str(out)]) == 0
    assert "ROAD" in capsys.readouterr().out
    import json

    road = json.loads((out / "evaluate.json").read_text())["results"]["gradcam"]["ROAD"]
    assert -0.5 <= road <= 0.5


def test_explain_a_vision_transformer_with_its_default_layer_and_reshape(image_dir, tmp_path, capsys):
    out = tmp_path / "vit"
    assert main(["explain", str(image_dir / "cat.png"), "--model", "vit_b_16", "--out", str(out)]) == 0
    assert "encoder.layers.encoder_layer_11.ln_1 of vit_b_16" in capsys.readouterr().out
    assert len(os.listdir(out)) == 1
