"""export.onnx_graph / export.torchscript / export.runtime: defects found probing exported files.

Real ``target`` inputs, static and dynamic batches that ONNX Runtime loads, grad mode restored
after a failing TorchScript call, 1x1 layers refused, damaged metadata, opsets, bad examples,
out-of-range targets in the raw graphs, and no exporter noise.
"""

from __future__ import annotations

import json
import warnings
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import export
from explainer import Explainer, ExportError, InputError
from export.torchscript import script_module
from tests.helpers import calibrated_model


@pytest.fixture(scope="module")
def resnet_layer4():
    return Explainer(calibrated_model("resnet18"), "layer4", "gradcam")


@pytest.fixture(scope="module")
def onnx_file(resnet_layer4, tmp_path_factory):
    path = tmp_path_factory.mktemp("reliability") / "g.onnx"
    export.to_onnx(resnet_layer4, path, torch.randn(2, 3, 64, 64))
    return path


def test_target_is_a_real_graph_input_not_an_initializer(onnx_file, capfd):
    model = onnx.load(str(onnx_file))
    assert [i.name for i in model.graph.input] == ["input", "target"]
    assert "target" not in {init.name for init in model.graph.initializer}
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert session.get_overridable_initializers() == []
    assert "appears in graph inputs" not in capfd.readouterr().err  # ORT's warning at every session, once
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    logits, argmax_cam = session.run(None, {"input": x, "target": np.array([-1, -1], dtype=np.int64)})
    _, chosen_cam = session.run(None, {"input": x, "target": logits.argmax(1).astype(np.int64)})
    assert np.abs(argmax_cam - chosen_cam).max() == 0.0  # negative = argmax


def test_runtime_fills_in_the_target(onnx_file, resnet_layer4):
    x = torch.randn(3, 3, 64, 64)
    result = export.load(onnx_file)(x)
    assert float((result.cams - resnet_layer4(x).cams).abs().max()) <= 1e-4


def test_static_batch_keeps_the_examples_batch_and_loads(resnet_layer4, tmp_path):
    x = torch.randn(3, 3, 64, 64)
    export.to_onnx(resnet_layer4, tmp_path / "s.onnx", x, dynamic_batch=False)
    model = onnx.load(str(tmp_path / "s.onnx"))
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [3, 3, 64, 64]
    assert model.graph.input[1].type.tensor_type.shape.dim[0].dim_value == 3
    result = export.load(tmp_path / "s.onnx")(x, [1, 2, 3])
    assert float((result.cams - resnet_layer4(x, [1, 2, 3]).cams).abs().max()) <= 1e-4


class TokenLinearHead(nn.Module):
    """conv -> tokens -> LayerNorm -> Linear -> mean -> fc: ``linear`` on (N, tokens, C) once pinned the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.norm = nn.LayerNorm(8)
        self.mix = nn.Linear(8, 8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        tokens = self.conv(x).flatten(2).transpose(1, 2)
        return self.fc(self.mix(self.norm(tokens)).mean(1))


@pytest.mark.parametrize("part", ["full", "head"])
def test_token_linear_head_exports_with_a_dynamic_batch(part, tmp_path):
    torch.manual_seed(0)
    exp = Explainer(TokenLinearHead().eval(), "conv", "gradcam")
    export.to_onnx(exp, tmp_path / "t.onnx", torch.randn(2, 3, 32, 32), part=part)
    model = onnx.load(str(tmp_path / "t.onnx"))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    runtime = export.load(tmp_path / "t.onnx")
    for n in (1, 2, 5):
        x = torch.randn(n, 3, 32, 32)
        eager = exp(x)
        inputs = x if part == "full" else exp.backbone(x)[0]
        got = runtime(inputs)
        reference = eager.cams if part == "full" else export_head_reference(eager)
        assert float((got.cams - reference).abs().max()) <= 1e-4
        assert torch.equal(got.targets, eager.targets)


def export_head_reference(eager):
    from explainer import normalize_maps

    return normalize_maps(eager.raw)


def test_torchscript_failure_restores_grad_mode(resnet_layer4, tmp_path):
    export.to_torchscript(resnet_layer4, tmp_path / "g.pt", torch.randn(2, 3, 64, 64))
    module = torch.jit.load(str(tmp_path / "g.pt"))
    x = torch.randn(1, 3, 64, 64)
    expected = module(x)[1]
    with pytest.raises(Exception, match="channels"):
        module(torch.randn(1, 4, 64, 64))  # wrong channel count: fails inside the graph
    assert torch.is_grad_enabled()
    assert torch.equal(module(x)[1], expected)  # the next valid call runs, unrelated autograd works too
    w = torch.ones(2, requires_grad=True)
    (w * 3).sum().backward()
    assert torch.equal(w.grad, torch.full((2,), 3.0))


def test_one_by_one_layers_are_refused_at_export_and_in_the_graph(resnet_layer4, tmp_path):
    with pytest.raises(ExportError, match="1x1 map"):
        export.to_onnx(resnet_layer4, tmp_path / "o.onnx", torch.randn(2, 3, 32, 32))
    with pytest.raises(ExportError, match="1x1 map"):
        export.to_torchscript(resnet_layer4, tmp_path / "o.pt", torch.randn(2, 3, 32, 32))
    export.to_torchscript(resnet_layer4, tmp_path / "ok.pt", torch.randn(2, 3, 64, 64))
    module = torch.jit.load(str(tmp_path / "ok.pt"))
    with pytest.raises(Exception, match="larger than 1x1"):
        module(torch.randn(1, 3, 32, 32))  # TorchScript takes other sizes: this one maps to 1x1
    assert torch.is_grad_enabled()


def _rewrite_onnx_metadata(src, dst, value: str) -> None:
    model = onnx.load(str(src))
    for entry in model.metadata_props:
        if entry.key == "deploycam":
            entry.value = value
    onnx.save(model, str(dst))


@pytest.mark.parametrize("value", ["{not json", json.dumps({"part": "full"}), json.dumps([1, 2]),
                                   json.dumps({"part": "full", "method": "gradcam", "layer": "x", "input_shape": [3],
                                               "image_size": [64, 64], "num_classes": 10, "format": "onnx"})])
def test_damaged_metadata_is_an_export_error(onnx_file, tmp_path, value):
    _rewrite_onnx_metadata(onnx_file, tmp_path / "bad.onnx", value)
    with pytest.raises(ExportError, match="metadata is damaged"):
        export.load(tmp_path / "bad.onnx")


def test_damaged_torchscript_metadata_is_an_export_error(resnet_layer4, tmp_path):
    export.to_torchscript(resnet_layer4, tmp_path / "g.pt", torch.randn(2, 3, 64, 64))
    with zipfile.ZipFile(tmp_path / "g.pt") as src, zipfile.ZipFile(tmp_path / "bad.pt", "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, b"{broken" if item.filename.endswith("deploycam.json") else data)
    with pytest.raises(ExportError, match="metadata is damaged"):
        export.load(tmp_path / "bad.pt")


@pytest.mark.parametrize("opset", [7, 17, 24, 99, True])
def test_unsupported_opsets_are_refused(resnet_layer4, tmp_path, opset):
    with pytest.raises(ExportError, match="opset must be between 18 and 23"):
        export.to_onnx(resnet_layer4, tmp_path / "o.onnx", torch.randn(2, 3, 64, 64), opset=opset)
    assert not (tmp_path / "o.onnx").exists()


def test_requested_opset_is_honoured(resnet_layer4, tmp_path):
    export.to_onnx(resnet_layer4, tmp_path / "o.onnx", torch.randn(2, 3, 64, 64), opset=20)
    versions = {op.domain: op.version for op in onnx.load(str(tmp_path / "o.onnx")).opset_import}
    assert versions.get("", versions.get("ai.onnx")) == 20


@pytest.mark.parametrize("example,match", [
    (torch.randn(2, 3, 64, 64, dtype=torch.float64), "float64.*float32"),
    (torch.randn(2, 4, 64, 64), "4 channels.*expects 3"),
    (torch.randn(3, 64, 64), r"\(N, C, H, W\)"),
    (np.zeros((2, 3, 64, 64), dtype=np.float32), r"\(N, C, H, W\)"),
])
def test_bad_examples_are_input_errors(resnet_layer4, tmp_path, example, match):
    for writer, name in ((export.to_onnx, "e.onnx"), (export.to_torchscript, "e.pt")):
        with pytest.raises(InputError, match=match):
            writer(resnet_layer4, tmp_path / name, example)


def test_unwritable_destination_fails_before_the_work(resnet_layer4, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="not a writable folder"):
        export.to_onnx(resnet_layer4, tmp_path / "file" / "g.onnx", torch.randn(2, 3, 64, 64))
    with pytest.raises(ExportError, match="not a writable folder"):
        export.to_torchscript(resnet_layer4, tmp_path / "missing" / "g.pt", torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize("layer", ["layer4", "layer3"])  # analytic pool+linear step, traced step
def test_out_of_range_target_gives_an_all_zero_map_in_every_raw_graph(layer, tmp_path):
    exp = Explainer(calibrated_model("resnet18"), layer, "gradcam")
    export.to_onnx(exp, tmp_path / "g.onnx", torch.randn(2, 3, 64, 64))
    export.to_torchscript(exp, tmp_path / "g.pt", torch.randn(2, 3, 64, 64))
    x = torch.randn(2, 3, 64, 64)
    session = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    _, cam = session.run(None, {"input": x.numpy(), "target": np.array([5, 1000], dtype=np.int64)})
    assert np.abs(cam[1]).max() == 0.0 and np.abs(cam[0]).max() > 0.5
    _, ts_cam = torch.jit.load(str(tmp_path / "g.pt"))(x, torch.tensor([5, 1000]))
    assert float(ts_cam[1].abs().max()) == 0.0 and float(ts_cam[0].abs().max()) > 0.5


def test_export_emits_no_axis_name_or_annotation_noise(resnet_layer4, tmp_path, capfd):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export.to_onnx(resnet_layer4, tmp_path / "g.onnx", torch.randn(2, 3, 64, 64))
        export.to_torchscript(resnet_layer4, tmp_path / "g.pt", torch.randn(2, 3, 64, 64))
        script_module(torch.fx.symbolic_trace(calibrated_model("resnet18")))  # the bench's plain TorchScript
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "axis name" in m or "instance-level annotations" in m], messages
    printed = capfd.readouterr()
    assert "return visitor(node)" not in printed.err + printed.out


@pytest.mark.slow
def test_timm_efficientformer_exports_a_loadable_dynamic_batch(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("efficientformer_l1", pretrained=False).eval()
    exp = Explainer(model, "stages.3.blocks.2", "gradcam")
    export.to_onnx(exp, tmp_path / "e.onnx", torch.randn(2, 3, 224, 224))
    runtime = export.load(tmp_path / "e.onnx")
    for n in (1, 3):
        x = torch.randn(n, 3, 224, 224)
        assert float((runtime(x).cams - exp(x).cams).abs().max()) <= 1e-4


def test_opencv_dnn_explains_a_given_class(tmp_path):
    """OpenCV's DNN engine folds initializers into constants: only a real input lets it take a target."""
    from export.opencv_dnn import new_engine, read_onnx

    try:
        new_engine()
    except ExportError as exc:
        pytest.skip(f"OpenCV 5's DNN engine runs these graphs: {exc}")
    exp = Explainer(calibrated_model("resnet18"), "layer3", "gradcam")
    export.to_onnx(exp, tmp_path / "g.onnx", torch.randn(2, 3, 64, 64))
    net = read_onnx(str(tmp_path / "g.onnx"))
    x = torch.randn(2, 3, 64, 64)
    net.setInput(x.numpy(), "input")
    net.setInput(np.array([5, 7], dtype=np.int64), "target")
    logits, cam = net.forward(["logits", "cam"])
    eager = exp(x, [5, 7])
    assert np.abs(cam - eager.cams.numpy()).max() <= 1e-4
    assert (logits.argmax(1) == eager.logits.argmax(1).numpy()).all()


@pytest.mark.parametrize("part", ["full", "head"])
def test_compare_reports_parity_for_both_parts(resnet_layer4, tmp_path, part):
    path = tmp_path / f"{part}.onnx"
    export.to_onnx(resnet_layer4, path, torch.randn(2, 3, 64, 64), part=part)
    result = export.compare(resnet_layer4, export.load(path), torch.randn(3, 3, 64, 64))
    assert result.ok and result.same_classes and result.max_diff <= 1e-4
    assert "onnxruntime" in result.backend
