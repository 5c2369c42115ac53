"""deploycam.cli with --onnx: layers, explain and export for a model given only as an ONNX file, and a real
ImageNet model (EfficientNet-Lite0) explained through its ONNX export."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("onnx2torch", reason="the onnx extra (onnx2torch) is not installed")

from deploycam.cli import main  # noqa: E402
from explainer import Explainer  # noqa: E402
from explainer.overlay import save_png  # noqa: E402
from tests import onnx_models  # noqa: E402

KERAS = onnx_models.keras_path("keras_mobilenet_v2")


@pytest.fixture()
def cat_png(tmp_path, photos):
    path = tmp_path / "cat.png"
    save_png(str(path), photos["chelsea"])
    return path


def test_layers_lists_tensors_and_marks_the_default(capsys):
    assert main(["layers", "--onnx", onnx_models.TF_STYLE]) == 0
    out = capsys.readouterr().out
    assert "block_add    Nx8x16x16" in out and "features     Nx16x16x16             Clip features_relu6  <- default" in out


def test_explain_a_keras_model_with_its_preprocessing(cat_png, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["explain", str(cat_png), "--onnx", KERAS, "--input-layout", "nhwc", "--mean", "0.5", "0.5", "0.5",
                 "--std", "0.5", "0.5", "0.5", "--out", str(out), "--topk", "2", "--method", "layercam"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert len(list(out.glob("cat_*_layercam.png"))) == 3  # two classes and their grid
    assert "keras_mobilenet_v2.onnx" in captured.out


def test_export_an_onnx_model_back_and_explain_with_the_graph(cat_png, tmp_path, capsys):
    graph = tmp_path / "keras_cam.onnx"
    assert main(["export", "--onnx", KERAS, "--input-layout", "nhwc", "--out", str(graph)]) == 0
    captured = capsys.readouterr()
    assert "input (N, 96, 96, 3)" in captured.out and "same predicted classes: True" in captured.out
    assert main(["explain", str(cat_png), "--runtime", str(graph), "--out", str(tmp_path / "o")]) == 0
    capsys.readouterr()
    assert main(["explain", str(cat_png), "--runtime", str(graph), "--backend", "opencv", "--out",
                 str(tmp_path / "o2")]) == 0  # an NHWC graph in OpenCV 5's DNN engine
    assert "opencv/cpu" in capsys.readouterr().out
    assert main(["explain", str(cat_png), "--backend", "openvino", "--out", str(tmp_path / "o3")]) == 2
    assert "--backend openvino runs exported .onnx files" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["layers", "--onnx", "missing.onnx"], "no such file"),
    (["explain", "x.png", "--input-layout", "nhwc"], "--input-layout is for --onnx models"),
    (["explain", "x.png", "--onnx", KERAS, "--runtime", KERAS], "not both"),
    (["explain", "x.png", "--onnx", KERAS, "--std", "0", "1", "1"], "--std values must be non-zero"),
    (["explain", "x.png", "--onnx", KERAS, "--input-layout", "nhwc", "--size", "128"], "96x96 images; --size 128"),
])
def test_bad_onnx_arguments_exit_2_with_one_line(argv, message, tmp_path, capsys, cat_png):
    argv = [str(cat_png) if a == "x.png" else a for a in argv] + (["--out", str(tmp_path / "o")] if "explain" in argv else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
@pytest.mark.parametrize("exporter", onnx_models.EXPORTERS)
def test_real_imagenet_model_through_onnx_explains_like_the_pytorch_model(exporter, tmp_path, photos):
    """EfficientNet-Lite0's real weights, exported by each torch exporter at its defaults: the ONNX file alone
    classifies the cat as an Egyptian cat, with the PyTorch model's map (within 1e-4)."""
    from explainer.imaging import Preprocess
    from explainer.models import load_model

    loaded = load_model("efficientnet-lite0")
    x = Preprocess()(photos["chelsea"])[0][None]
    path = tmp_path / "lite0.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(loaded.model, (x,), str(path), dynamo=exporter == "dynamo")
    eager = Explainer(loaded.model, "_swish_1")(x)  # the last ReLU6, which feeds the pooling (ONNX default)
    from_file = Explainer.from_onnx(path)(x.numpy())
    assert int(from_file.targets[0]) == int(eager.targets[0]) == 285  # Egyptian cat
    assert float((from_file.cams - eager.cams).abs().max()) <= 1e-4
    np.testing.assert_allclose(from_file.logits.numpy(), eager.logits.numpy(), atol=1e-3)


def test_explain_with_a_detector_writes_per_box_maps_and_a_grid(cat_png, tmp_path, capsys):
    out = tmp_path / "det"
    code = main(["explain", str(cat_png), "--model", "fasterrcnn_mobilenet_v3_large_320_fpn", "--score-threshold", "0",
                 "--topk", "2", "--method", "layercam", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert len(list(out.glob("cat_box*_layercam.png"))) == 2 and (out / "cat_grid_layercam.png").is_file()
    assert "backbone.fpn.layer_blocks.0" in captured.out and "random weights" in captured.err
    again = ["explain", str(cat_png), "--model", "fasterrcnn_mobilenet_v3_large_320_fpn", "--method", "layercam",
             "--out", str(out)]
    assert main(again) == 2 and "would be overwritten" in capsys.readouterr().err
    assert main(["explain", str(cat_png), "--model", "retinanet_resnet50_fpn", "--class", "3",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--class is for classifiers" in capsys.readouterr().err


def test_models_lists_detectors(capsys):
    assert main(["models"]) == 0
    assert "fasterrcnn_resnet50_fpn  (detector" in capsys.readouterr().out


def test_export_a_detector_to_torchscript_and_check_it(tmp_path, capsys):
    out = tmp_path / "det.pt"
    code = main(["export", "--model", "fasterrcnn_mobilenet_v3_large_320_fpn", "--score-threshold", "0", "--size", "160",
                 "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert out.is_file() and "max |cam - eager| = " in captured.out and "labels (N, B), boxes (N, B, 4)" in captured.out
    assert main(["export", "--model", "fasterrcnn_mobilenet_v3_large_320_fpn", "--out", str(tmp_path / "d.onnx")]) == 2
    assert "TorchScript only" in capsys.readouterr().err
