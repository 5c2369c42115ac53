"""export.load(path, runtime="openvino" | "opencv"): exported ONNX explanations in OpenVINO and OpenCV's DNN
engine against eager on fresh batches with given classes, the patterns those engines got wrong, and the
self-check that refuses a graph an engine computes wrongly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import export
from explainer import Explainer
from explainer.errors import ExportError
from export.opencv_dnn import new_engine
from tests.helpers import calibrated_model, random_input

cv2 = pytest.importorskip("cv2")
try:
    new_engine(cv2)
except ExportError as _exc:
    pytest.skip(f"OpenCV 5's DNN engine is needed: {_exc}", allow_module_level=True)
pytest.importorskip("onnxruntime")

RUNTIMES = ["openvino", "opencv"]
MODELS = {  # name -> (model factory, layer, part)
    "resnet18-layer3": (lambda: calibrated_model("resnet18"), "layer3", "full"),  # traced gradient
    "resnet18-layer4-head": (lambda: calibrated_model("resnet18"), "layer4", "head"),  # analytic gradient
    "mobilenet_v3_small": (lambda: calibrated_model("mobilenet_v3_small"), "features", "full"),  # SE: HardSigmoid
    "timm-mobilenetv3_small_100": (lambda: _timm("mobilenetv3_small_100"), "blocks", "full"),  # 1x1 conv head
    "efficientnet_b0": (lambda: calibrated_model("efficientnet_b0"), "features", "full"),
}


def _timm(name: str) -> torch.nn.Module:
    timm = pytest.importorskip("timm")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return timm.create_model(name, pretrained=False).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engines")
    cache = {}

    def get(name):
        if name not in cache:
            factory, layer, part = MODELS[name]
            explainer = Explainer(factory(), layer, "gradcam")
            path = folder / f"{name}.onnx"
            export.to_onnx(explainer, path, random_input(2, 64), part=part)
            cache[name] = (explainer, path, part)
        return cache[name]
    return get


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("name", list(MODELS))
def test_engine_equals_eager_with_given_classes(exported, name, runtime):
    if runtime == "openvino":
        pytest.importorskip("openvino")
    explainer, path, part = exported(name)
    rt = export.load(path, runtime=runtime)
    assert rt.backend.startswith("openvino/" if runtime == "openvino" else "opencv/")
    for n, seed in ((3, 21), (1, 22), (3, 23)):
        x = random_input(n, 64, seed=seed)
        given = [3, 250, 999][:n]
        eager = explainer(x, given)
        if part == "full":
            ours = rt(x, given)
            assert (ours.cams - eager.cams).abs().max() <= 1e-4
            assert export.compare(explainer, rt, x).ok  # argmax: same classes, same maps
        else:
            with torch.no_grad():
                out = explainer.backbone(x)
            activations = out[0] if isinstance(out, tuple) else out
            ours = rt(activations, given)
            raw = eager.raw
            lo = raw.amin((1, 2), keepdim=True)
            assert (ours.cams - (raw - lo) / (raw.amax((1, 2), keepdim=True) - lo + 1e-7)).abs().max() <= 1e-4
        assert torch.allclose(ours.logits, eager.logits, atol=1e-4 * float(eager.logits.abs().max()))


def _bad_pattern_file(path, rewrite: bool) -> None:
    """A deploycam-shaped graph (input, target -> logits, cam) whose body is HardSigmoid(mean(x)) * x:
    what MobileNetV3's squeeze-excitation exports to, and what OpenCV 5.0's new engine gets wrong."""
    import onnx
    from onnx import TensorProto, helper

    from export.engine_patterns import engine_safe
    from export.parts import GraphInfo

    nodes = [
        helper.make_node("ReduceMean", ["input", "axes_hw"], ["pooled"], keepdims=1),
        helper.make_node("HardSigmoid", ["pooled"], ["gate"], alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["gate", "input"], ["scaled"]),
        helper.make_node("ReduceMean", ["scaled", "axes_hw"], ["logits"], keepdims=0),
        helper.make_node("ReduceMean", ["scaled", "axes_c"], ["cam"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "bad",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8]),
         helper.make_tensor_value_info("target", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["batch", 8, 8])],
        [helper.make_tensor("axes_hw", TensorProto.INT64, [2], [2, 3]),
         helper.make_tensor("axes_c", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    info = GraphInfo("full", "gradcam", "x", (3, 8, 8), (8, 8), 3, "onnx")
    entry = model.metadata_props.add()
    entry.key, entry.value = "deploycam", info.to_json()
    onnx.save(engine_safe(model) if rewrite else model, str(path))


def test_a_graph_the_engine_computes_wrongly_is_refused_and_the_rewrite_fixes_it(tmp_path):
    import onnxruntime as ort

    _bad_pattern_file(tmp_path / "raw.onnx", rewrite=False)
    with pytest.raises(ExportError, match=r"OpenCV DNN computes .* wrongly.*runtime='onnxruntime'"):
        export.load(tmp_path / "raw.onnx", runtime="opencv")
    export.load(tmp_path / "raw.onnx", runtime="opencv", verify=False)  # the caller's choice
    _bad_pattern_file(tmp_path / "safe.onnx", rewrite=True)
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    feed = {"input": x, "target": np.zeros(2, dtype=np.int64)}
    before = ort.InferenceSession(str(tmp_path / "raw.onnx")).run(None, feed)
    after = ort.InferenceSession(str(tmp_path / "safe.onnx")).run(None, feed)
    assert all(np.abs(a - b).max() <= 1e-6 for a, b in zip(before, after))  # the same function
    rt = export.load(tmp_path / "safe.onnx", runtime="opencv")  # passes its self-check
    assert np.abs(rt(torch.from_numpy(x)).logits.numpy() - after[0]).max() <= 1e-5


def test_engine_options_get_specific_errors(exported, tmp_path):
    _, path, _ = exported("resnet18-layer3")
    with pytest.raises(ExportError, match="runtime must be one of"):
        export.load(path, runtime="tensorrt")
    with pytest.raises(ExportError, match="CPU only"):
        export.load(path, runtime="opencv", device="cuda")
    explainer = Explainer(calibrated_model("resnet18"), "layer4")
    export.to_torchscript(explainer, tmp_path / "m.pt", random_input(2, 64))
    with pytest.raises(ExportError, match="runs .onnx files"):
        export.load(tmp_path / "m.pt", runtime="opencv")
    pytest.importorskip("openvino")
    with pytest.raises(ExportError, match="no device 'npu'.*available: CPU"):
        export.load(path, runtime="openvino", device="npu")
    rt = export.load(path, runtime="openvino")
    assert json.loads(rt.info.to_json())["layer"] == "layer3"


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_one_by_one_convolution_gradient_is_a_plain_convolution(groups):
    """The traced input gradient of a 1x1 convolution is a 1x1 Conv with in/out swapped (OpenVINO 2026.4
    computes the ConvTranspose it replaces wrongly after global pooling), equal to autograd's."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from export.decompositions import gradient_decompositions

    conv = torch.nn.Conv2d(6, 12, 1, groups=groups).double()
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64)

    def input_grad(a):
        return torch.func.grad(lambda t: (conv(t) ** 2).sum())(a)

    traced = make_fx(input_grad, decomposition_table=gradient_decompositions())(x)
    convs = [n for n in traced.graph.nodes if n.target is torch.ops.aten.convolution.default]
    assert convs and all(n.args[6] is False for n in convs)  # transposed=False everywhere
    assert torch.allclose(traced(x), input_grad(x), atol=1e-12)
