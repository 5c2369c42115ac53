"""export.runtime, export.torchscript, examples/cpp: exported files: structure, loading anywhere, bad input, CLI, and the C++ caller."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import export
from deploycam.cli import main
from explainer import Explainer, ExportError, GradModeError, InputError, TargetError
from tests.helpers import calibrated_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def explainer():
    return Explainer(calibrated_model("resnet18"), "layer4", "gradcam")


@pytest.fixture(scope="module")
def files(explainer, tmp_path_factory):
    d = tmp_path_factory.mktemp("graphs")
    x = torch.randn(2, 3, 64, 64)
    export.to_onnx(explainer, d / "full.onnx", x)
    export.to_onnx(explainer, d / "head.onnx", x, part="head")
    export.to_torchscript(explainer, d / "full.pt", x)
    return d


def test_onnx_graph_is_plain_and_named(files):
    model = onnx.load(str(files / "full.onnx"))
    onnx.checker.check_model(model)
    assert {op.domain for op in model.opset_import} <= {"", "ai.onnx"}
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}
    inputs = [i.name for i in model.graph.input]
    assert inputs[0] == "input" and "target" in inputs
    assert [o.name for o in model.graph.output] == ["logits", "cam"]
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param  # symbolic batch
    assert not os.path.exists(str(files / "full.onnx") + ".data")
    head = onnx.load(str(files / "head.onnx"))
    assert head.graph.input[0].name == "activations"


def test_torchscript_loads_without_the_project(files, tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["explainer"] = None  # any import of the project now fails
        sys.modules["export"] = None
        import torch
        m = torch.jit.load({str(files / "full.pt")!r})
        for _ in range(4):  # past TorchScript's profiling runs, into its optimised plan
            logits, cam = m(torch.randn(3, 3, 64, 64))
            logits2, cam2 = m(torch.randn(1, 3, 64, 64), torch.tensor([5]))
        try:
            with torch.no_grad():
                m(torch.randn(1, 3, 64, 64))
        except Exception as exc:  # torch.jit.Error from the scripted raise
            assert "call it with grad mode enabled" in str(exc)
        else:
            raise AssertionError("no_grad call was not refused")
        print(tuple(logits.shape), tuple(cam.shape), tuple(cam2.shape))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "(3, 1000) (3, 64, 64) (1, 64, 64)" in out.stdout


def test_torchscript_refuses_inference_mode(files):
    rt = export.load(files / "full.pt")
    with torch.inference_mode(), pytest.raises(GradModeError):
        rt(torch.randn(1, 3, 64, 64))


def test_torchscript_runtime_repeated_calls_under_no_grad_match_eager(tmp_path):
    """The runtime enables grad around the graph, so callers under no_grad get the same maps every call."""
    explainer = Explainer(calibrated_model("efficientnet-lite0"), "_conv_head", "gradcam")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    export.to_torchscript(explainer, tmp_path / "l.pt", torch.cat([x, x]))
    rt = export.load(tmp_path / "l.pt")
    expected = explainer(x, [3]).cams
    with torch.no_grad():
        for _ in range(4):
            assert float((rt(x, [3]).cams - expected).abs().max()) == 0.0


@pytest.mark.parametrize("method", ["ablationcam", "scorecam"])
def test_unsupported_method_for_export_says_why(method, tmp_path):
    exp = Explainer(calibrated_model("resnet18"), "layer4", method)
    with pytest.raises(ExportError, match=f"'{method}' re-runs the network .* Export a gradient method"):
        export.to_onnx(exp, tmp_path / "e.onnx", torch.randn(2, 3, 64, 64))


def test_head_part_of_a_layer_with_skips_is_refused(tmp_path):
    exp = Explainer(calibrated_model("resnet18"), "layer4.0.bn2")
    with pytest.raises(ExportError, match="part='full'"):
        export.to_torchscript(exp, tmp_path / "h.pt", torch.randn(2, 3, 64, 64), part="head")
    export.to_onnx(exp, tmp_path / "f.onnx", torch.randn(2, 3, 64, 64))  # the full graph carries the skip
    x = torch.randn(3, 3, 64, 64)
    assert float((export.load(tmp_path / "f.onnx")(x).cams - exp(x).cams).abs().max()) <= 1e-4


def test_training_mode_and_plain_callables_are_refused(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.warns(UserWarning):
        exp = Explainer(model, "0")
    with pytest.raises(ExportError, match="training mode"):
        export.to_onnx(exp, tmp_path / "t.onnx", torch.randn(2, 3, 8, 8))
    model.eval()
    parts = Explainer.from_parts(lambda x: model[0](x), lambda a: model[4](model[3](model[2](model[1](a)))))
    with pytest.raises(ExportError, match="nn.Modules"):
        export.to_torchscript(parts, tmp_path / "p.pt", torch.randn(2, 3, 8, 8))
    with pytest.raises(ExportError, match="part must be one of"):
        export.to_onnx(Explainer(model, "0"), tmp_path / "x.onnx", torch.randn(2, 3, 8, 8), part="middle")


def test_runtime_bad_inputs(files):
    rt = export.load(files / "full.onnx")
    with pytest.raises(InputError, match=r"exported for image inputs of shape \(N, 3, 64, 64\)"):
        rt(torch.randn(1, 3, 96, 96))
    with pytest.raises(InputError, match="float32"):
        rt(np.zeros((1, 3, 64, 64)))
    with pytest.raises(InputError, match="4-D"):
        rt(torch.randn(3, 64, 64))
    with pytest.raises(TargetError, match=r"\[0, 1000\)"):
        rt(torch.randn(2, 3, 64, 64), [1, 1000])
    with pytest.raises(TargetError, match="2 images"):
        rt(torch.randn(2, 3, 64, 64), [1, 2, 3])


def test_load_errors(tmp_path, files):
    with pytest.raises(FileNotFoundError):
        export.load(tmp_path / "nothing.onnx")
    (tmp_path / "junk.onnx").write_text("not a model")
    with pytest.raises(ExportError, match="not an ONNX model"):
        export.load(tmp_path / "junk.onnx")
    (tmp_path / "junk.pt").write_text("not a model")
    with pytest.raises(ExportError, match="not a TorchScript archive"):
        export.load(tmp_path / "junk.pt")
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(plain))
    with pytest.raises(ExportError, match="not one exported by deploycam"):
        export.load(plain)


@pytest.mark.parametrize("runtime", ["onnxruntime", "opencv"])
def test_load_names_the_problem_with_a_path(tmp_path, files, runtime):
    """A missing path, a folder, a wrong suffix: one sentence each, before any engine parses anything."""
    from explainer.errors import GraphFileNotFoundError

    with pytest.raises(GraphFileNotFoundError, match=r"no exported graph at .*nothing\.onnx \(no such file\)"):
        export.load(tmp_path / "nothing.onnx", runtime=runtime)
    with pytest.raises(FileNotFoundError):  # still a FileNotFoundError for callers that catch that
        export.load(tmp_path / "nothing.pt")
    with pytest.raises(ExportError, match=r"is a folder; give one exported graph file: \.onnx .*; it holds full\.onnx"):
        export.load(files, runtime=runtime)
    picture = tmp_path / "photo of a cat.jpg"
    picture.write_bytes(b"\xff\xd8 not even a jpeg")
    with pytest.raises(ExportError, match=r"has the suffix '\.jpg', not an exported graph's; accepted: \.onnx"):
        export.load(picture, runtime=runtime)
    (tmp_path / "noext").write_bytes((files / "full.onnx").read_bytes())
    with pytest.raises(ExportError, match=r"suffix '\(none\)'.*rename the file"):
        export.load(tmp_path / "noext", runtime=runtime)
    shutil.copy(files / "full.onnx", tmp_path / "FULL.ONNX")  # suffixes are case-insensitive
    assert export.load(tmp_path / "FULL.ONNX").info.part == "full"
    with pytest.raises(ExportError, match=r"suffix '\.onnx'"):
        export.load_detector(files / "full.onnx")
    with pytest.raises(GraphFileNotFoundError):
        export.load_detector(tmp_path / "det.pt")


def test_missing_cuda_provider_falls_back_or_raises(files):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.warns(RuntimeWarning, match="falling back to CPUExecutionProvider"):
        rt = export.load(files / "full.onnx", device="cuda")
    assert rt.provider == "CPUExecutionProvider" and "CPU" in rt.backend
    with pytest.raises(ExportError, match="onnxruntime-gpu"):
        export.load(files / "full.onnx", device="cuda", strict=True)


@pytest.mark.parametrize("part", ["full", "head"])
def test_io_binding_equals_numpy_feeds(files, explainer, part):
    """IO binding (torch tensors bound in place; the default on CUDA) gives the numpy run's numbers,
    every target form included; ONNX Runtime's CUDA graphs are refused clearly without its CUDA provider."""
    plain = export.load(files / f"{part}.onnx")
    bound = export.load(files / f"{part}.onnx", io_binding=True)
    assert bound._bound is not None and plain._bound is None
    x = torch.randn(3, 3, 64, 64)
    if part == "head":
        x = explainer.backbone(x)[0] if isinstance(explainer.backbone(x), tuple) else explainer.backbone(x)
    for targets, topk in ((None, None), ([1, 2, 3], None), ([[1, 2], [3, 4], [5, 6]], None), (None, 2)):
        a, b = plain(x, targets, topk=topk), bound(x, targets, topk=topk)
        assert torch.equal(a.targets, b.targets) and a.cams.shape == b.cams.shape
        assert float((a.cams - b.cams).abs().max()) == 0.0 and torch.equal(a.logits, b.logits)
    with pytest.raises(ExportError, match="cuda_graph=True needs ONNX Runtime's CUDAExecutionProvider"):
        export.load(files / f"{part}.onnx", cuda_graph=True)


def test_cli_export_and_explain_with_runtime(tmp_path, photos, capsys):
    from explainer.overlay import save_png

    out = tmp_path / "lite.onnx"
    assert main(["export", "--out", str(out), "--method", "layercam"]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "same predicted classes: True" in printed
    save_png(str(tmp_path / "cat.png"), photos["chelsea"])
    assert main(["explain", str(tmp_path / "cat.png"), "--runtime", str(out), "--out", str(tmp_path / "maps")]) == 0
    assert "285 Egyptian cat" in capsys.readouterr().out
    assert os.listdir(tmp_path / "maps") == ["cat_285_layercam.png"]
    assert main(["export", "--out", str(tmp_path / "h.pt"), "--part", "head", "--model", "resnet18"]) == 0
    assert "part=head" in capsys.readouterr().out
    assert main(["export", "--out", str(tmp_path / "x.bin")]) == 2


@pytest.fixture(scope="module")
def cpp_callers(tmp_path_factory):
    """Both C++ callers built by examples/cpp/build.sh: (TorchScript exe, AOTInductor exe)."""
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("needs a C++ compiler")
    exe = tmp_path_factory.mktemp("cpp") / "deploycam_cam"
    build = subprocess.run(["bash", os.path.join(ROOT, "examples", "cpp", "build.sh"), str(exe)],
                           capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHON": sys.executable})
    assert build.returncode == 0, build.stderr[-3000:]
    return exe, exe.parent / "deploycam_aoti"


def _check_cpp_caller(exe, graph, explainer, x, tmp_path) -> list[str]:
    """Run a C++ caller on ``x`` for the top class and for class 281; its maps and logits against eager
    within 1e-4, the class it says each map explains. Returns its two stdouts."""
    n, c, h, w = x.shape
    x.numpy().astype("<f4").tofile(tmp_path / "in.f32")
    outputs = []
    for target, prefix in ((None, "a"), (281, "b")):
        cmd = [str(exe), str(graph), str(tmp_path / "in.f32"), str(n), str(c), str(h), str(w), str(tmp_path / prefix)]
        run = subprocess.run(cmd + ([str(target)] if target is not None else []), capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stderr
        eager = explainer(x, target)
        cam = np.fromfile(tmp_path / f"{prefix}.cam.f32", dtype="<f4").reshape(n, h, w)
        logits = np.fromfile(tmp_path / f"{prefix}.logits.f32", dtype="<f4").reshape(n, 1000)
        assert np.abs(cam - eager.cams.numpy()).max() <= 1e-4
        assert np.abs(logits - eager.logits.numpy()).max() <= 1e-4 * np.abs(eager.logits.numpy()).max()
        explained = target if target is not None else int(eager.logits[0].argmax())
        assert f"image 0: class {explained}" in run.stdout  # the class the map explains
        assert (tmp_path / f"{prefix}_1.pgm").read_bytes().startswith(f"P5\n{w} {h}\n255\n".encode())
        outputs.append(run.stdout)
    return outputs


@pytest.mark.slow
def test_cpp_caller_matches_python(tmp_path, cpp_callers):
    explainer = Explainer(calibrated_model("efficientnet-lite0"), "_conv_head", "gradcam++")
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    export.to_torchscript(explainer, tmp_path / "m.pt", x)
    for stdout in _check_cpp_caller(cpp_callers[0], tmp_path / "m.pt", explainer, x, tmp_path):
        assert "grad mode after a failed call: on" in stdout


@pytest.mark.slow
def test_aoti_cpp_caller_matches_python(tmp_path, cpp_callers):
    """examples/cpp/aoti_main.cpp runs an AOTInductor package with AOTIModelPackageLoader (under InferenceMode)."""
    explainer = Explainer(calibrated_model("resnet18"), "layer3", "layercam")
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(4))
    export.to_aoti(explainer, tmp_path / "m.pt2", x)
    for stdout in _check_cpp_caller(cpp_callers[1], tmp_path / "m.pt2", explainer, x, tmp_path):
        assert '"layer": "layer3"' in stdout


class LgammaNet(nn.Module):
    """A head with an op (lgamma) that ONNX has no operator for."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.lgamma(self.conv(x).abs() + 1).mean(dim=(2, 3)))


def test_head_op_without_onnx_translation_is_named(tmp_path):
    exp = Explainer(LgammaNet().eval(), "conv")
    with pytest.raises(ExportError, match=r"lgamma.*no ONNX translation.*TorchScript"):
        export.to_onnx(exp, tmp_path / "l.onnx", torch.randn(2, 3, 8, 8))
    export.to_torchscript(exp, tmp_path / "l.pt", torch.randn(2, 3, 8, 8))  # TorchScript takes it
    x = torch.randn(3, 3, 8, 8)
    assert float((export.load(tmp_path / "l.pt")(x).cams - exp(x).cams).abs().max()) == 0.0
