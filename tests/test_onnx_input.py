"""Explainer.from_onnx: models given only as ONNX files (Keras through tf2onnx, a hand-built TF-style opset-13
graph, torchvision through both torch exporters), every method against a float64 reference computed without
the conversion, the explanation exported back, the ONNX Runtime route, and the errors."""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
import torch

pytest.importorskip("onnx2torch", reason="the onnx extra (onnx2torch) is not installed")

import export  # noqa: E402
from explainer import (  # noqa: E402
    Explainer,
    ExportError,
    InputError,
    LayerNotFoundError,
    LayerShapeError,
    OnnxModelError,
)
from explainer.methods import exportable_methods, perturbation_methods  # noqa: E402
from explainer.onnx_import import gradient_free_methods, spatial_tensors  # noqa: E402
from explainer.onnx_import.convert import read_model  # noqa: E402
from explainer.onnx_import.normalise import normalise  # noqa: E402
from tests import onnx_models, reference  # noqa: E402
from tests.helpers import calibrated_model, random_input  # noqa: E402

ONE_GRAPH = exportable_methods()


def assert_close(raw: np.ndarray, ref: np.ndarray, tol: float = 1e-4) -> None:
    assert raw.shape == ref.shape, (raw.shape, ref.shape)
    scale = max(np.abs(ref).max(), 1e-12)
    err = np.abs(raw - ref).max()
    assert err <= tol * scale, f"max abs diff {err:.3g} > {tol} x max {scale:.3g}"


@functools.cache
def keras_explainer(name: str) -> Explainer:
    return Explainer.from_onnx(onnx_models.keras_path(name), input_layout="nhwc", progress=False)


@functools.cache
def torchvision_explainer(arch: str, exporter: str) -> Explainer:
    return Explainer.from_onnx(onnx_models.torchvision_onnx(arch, exporter), progress=False)


# --- never PyTorch: Keras (tf2onnx, NHWC input) ----------------------------------------------------------------

@pytest.mark.parametrize("method", ONE_GRAPH)
@pytest.mark.parametrize("name", onnx_models.KERAS)
def test_keras_model_matches_keras_float64_gradients(name, method):
    """A, G and the logits come from Keras itself (GradientTape, float64): no conversion involved."""
    ref = onnx_models.keras_reference(name)
    exp = keras_explainer(name).with_method(method)
    result = exp(ref["x"], ref["target"])  # numpy, (N, H, W, C), as the Keras model takes it
    np.testing.assert_allclose(result.logits.double().numpy(), ref["logits"], atol=1e-4)
    assert_close(result.raw.double().numpy(), reference.FORMULAS[method](ref["A"], ref["G"]))
    assert result.cams.shape == ref["x"].shape[:3]


def test_keras_default_layer_is_the_input_of_global_pooling():
    exp = keras_explainer("keras_small_cnn")
    assert exp.layer.endswith("last_relu_1/Relu6:0")  # the Keras layer the reference was taken at
    assert exp.route == "torch" and exp.input_layout == "nhwc"


# --- never PyTorch: a hand-built opset-13 graph with TF's operators ---------------------------------------------

@pytest.mark.parametrize("method", ONE_GRAPH)
@pytest.mark.parametrize("layer", ["block_add", None, "features_relu6"])
def test_tf_style_graph_matches_a_float64_numpy_restatement(layer, method):
    """Transpose at the input, Clip as ReLU6, a grouped convolution, Add, GlobalAveragePool, Flatten, Gemm;
    None picks the input of the pooling ("features"); a node name picks its output."""
    x = np.random.default_rng(5).random((2, 16, 16, 3)).astype(np.float32)
    targets = [2, 9]
    exp = Explainer.from_onnx(onnx_models.TF_STYLE, layer, method, input_layout="nhwc")
    A, G, logits = onnx_models.tf_style_reference(x, targets, "block_add" if layer == "block_add" else "features")
    result = exp(x, targets)
    assert exp.layer == ("block_add" if layer == "block_add" else "features")
    np.testing.assert_allclose(result.logits.double().numpy(), logits, atol=1e-5)
    assert_close(result.raw.double().numpy(), reference.FORMULAS[method](A, G))


# --- torchvision models through both torch exporters at default settings ---------------------------------------

SLOW_ARCHS = [pytest.param(arch, layer, marks=pytest.mark.slow) for arch, layer in onnx_models.TORCHVISION_SLOW]


@pytest.mark.parametrize("method", ONE_GRAPH)
@pytest.mark.parametrize("exporter", onnx_models.EXPORTERS)
@pytest.mark.parametrize("arch,layer", [*onnx_models.TORCHVISION, *SLOW_ARCHS])
def test_torchvision_exports_match_the_original_models_float64_reference(arch, layer, exporter, method):
    """Exported for a batch of 1 at default settings (the dynamo exporter bakes the batch into Reshape);
    the normalised graph explains a batch of 2."""
    x = random_input(2, 64, seed=4)
    A, G, logits = reference.activations_and_gradients(calibrated_model(arch), layer, x, [3, 8])
    result = torchvision_explainer(arch, exporter).with_method(method)(x, [3, 8])
    np.testing.assert_allclose(result.logits.double().numpy(), logits, atol=1e-4)
    assert_close(result.raw.double().numpy(), reference.FORMULAS[method](A, G))


@pytest.mark.parametrize("method", perturbation_methods())
def test_perturbation_methods_match_the_pytorch_model(method):
    x = random_input(1, 64, seed=4)
    options = {"max_channels": 16} if method == "scorecam" else {}
    eager = Explainer(calibrated_model("resnet18"), "layer4", method, progress=False, **options)(x, 3)
    onnx_exp = Explainer.from_onnx(onnx_models.torchvision_onnx("resnet18", "dynamo"), None, method,
                                   progress=False, **options)
    assert_close(onnx_exp(x, 3).raw.double().numpy(), eager.raw.double().numpy(), tol=2e-3)


def test_targets_smoothing_topk_and_metrics_work_as_for_pytorch_models():
    from explainer import metrics

    exp = keras_explainer("keras_small_cnn")
    x = onnx_models.keras_reference("keras_small_cnn")["x"]
    top = exp(x, topk=3)
    assert top.cams.shape == (2, 3, 32, 32) and top.targets.shape == (2, 3)
    assert exp(torch.from_numpy(x), [[1, 2], [3, 4]]).cams.shape == (2, 2, 32, 32)
    smooth = exp(x, 1, aug_smooth=True, eigen_smooth=True)
    assert smooth.cams.shape == (2, 32, 32) and torch.isfinite(smooth.cams).all()
    result = exp(x, 1)
    auc = metrics.deletion_auc(exp.model, exp.to_nchw(x), result.cams, result.targets, steps=4)
    assert np.isfinite(np.asarray(auc)).all()


# --- the explanation exported back ------------------------------------------------------------------------------

CASES = [("keras_small_cnn", "gradcam"), ("keras_mobilenet_v2", "layercam"), ("tf_style", "gradcam++"),
         ("resnet18-dynamo", "gradcam"), ("mobilenet_v3_small-legacy", "eigencam")]


def case_explainer(name: str, method: str) -> tuple[Explainer, tuple[int, ...]]:
    if name.startswith("keras"):
        exp, shape = keras_explainer(name), onnx_models.keras_reference(name)["x"].shape[1:]
    elif name == "tf_style":
        exp, shape = Explainer.from_onnx(onnx_models.TF_STYLE, input_layout="nhwc"), (16, 16, 3)
    else:
        arch, exporter = name.split("-")
        exp, shape = torchvision_explainer(arch, exporter), (3, 64, 64)
    return exp.with_method(method), shape


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name,method", CASES, ids=[c[0] for c in CASES])
def test_exported_back_graphs_match_eager_on_fresh_inputs(name, method, fmt, tmp_path):
    exp, shape = case_explainer(name, method)
    gen = np.random.default_rng(11)
    example = gen.random((2, *shape)).astype(np.float32)
    path = tmp_path / ("cam.onnx" if fmt == "onnx" else "cam.pt")
    info = (export.to_onnx if fmt == "onnx" else export.to_torchscript)(exp, path, example)
    assert info.input_layout == exp.input_layout
    runtime = export.load(path)
    fresh = gen.random((3, *shape)).astype(np.float32)  # another batch size, other values
    got, want = runtime(fresh), exp(fresh)
    assert float((got.cams - want.cams).abs().max()) <= 1e-4
    assert torch.equal(got.logits.argmax(1), want.logits.argmax(1))
    given = runtime(fresh, [1, 2, 3])
    assert float((given.cams - exp(fresh, [1, 2, 3]).cams).abs().max()) <= 1e-4


def test_exported_nhwc_graph_takes_nhwc_images_in_plain_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    exp, _ = case_explainer("keras_small_cnn", "gradcam")
    x = onnx_models.keras_reference("keras_small_cnn")["x"]
    export.to_onnx(exp, tmp_path / "k.onnx", x)
    session = ort.InferenceSession(str(tmp_path / "k.onnx"), providers=["CPUExecutionProvider"])
    assert [d for d in session.get_inputs()[0].shape[1:]] == [32, 32, 3]
    logits, cam = session.run(["logits", "cam"], {"input": x, "target": np.array([3, 7], dtype=np.int64)})
    np.testing.assert_allclose(cam, exp(x, [3, 7]).cams.numpy(), atol=1e-4)
    with pytest.raises(InputError, match=r"\(N, 32, 32, 3\)"):
        export.load(tmp_path / "k.onnx")(x.transpose(0, 3, 1, 2))


# --- gradient-free methods on the file itself, in ONNX Runtime --------------------------------------------------

@pytest.mark.parametrize("method", gradient_free_methods())
def test_onnxruntime_route_matches_the_converted_route(method):
    pytest.importorskip("onnxruntime")
    x = onnx_models.keras_reference("keras_small_cnn")["x"]
    options = {"max_channels": 8} if method == "scorecam" else {}
    path = onnx_models.keras_path("keras_small_cnn")
    converted = Explainer.from_onnx(path, None, method, input_layout="nhwc", progress=False, **options)(x, [3, 7])
    runtime = Explainer.from_onnx(path, None, method, input_layout="nhwc", route="onnxruntime", progress=False,
                                  **options)
    assert runtime.route == "onnxruntime"
    got = runtime(x, [3, 7])
    assert_close(got.raw.double().numpy(), converted.raw.double().numpy(), tol=1e-3)
    torch.testing.assert_close(got.logits, converted.logits, atol=1e-5, rtol=0)


def test_unconvertible_graph_says_which_methods_still_work_and_they_do():
    data = onnx_models.unconvertible_head()
    with pytest.raises(OnnxModelError, match="LpNormalization.*" + re.escape(", ".join(gradient_free_methods()))):
        Explainer.from_onnx(data, method="gradcam")
    x = np.random.default_rng(0).random((2, 3, 8, 8)).astype(np.float32)
    for method in gradient_free_methods():
        exp = Explainer.from_onnx(data, method=method, progress=False)
        assert exp.route == "onnxruntime" and exp.layer == "act"
        result = exp(x, 1)
        assert result.cams.shape == (2, 8, 8) and torch.isfinite(result.cams).all()
    with pytest.raises(OnnxModelError, match="gradcam needs the gradient"):
        exp.with_method("gradcam")


# --- bad input ----------------------------------------------------------------------------------------------------

def test_errors_name_the_problem(tmp_path):
    text = tmp_path / "model.onnx"
    text.write_text("not a model")
    with pytest.raises(OnnxModelError, match="is not an ONNX model"):
        Explainer.from_onnx(text)
    with pytest.raises(FileNotFoundError):
        Explainer.from_onnx(tmp_path / "missing.onnx")
    with pytest.raises(LayerShapeError, match="no 4-D tensor"):
        Explainer.from_onnx(onnx_models.mlp())
    with pytest.raises(OnnxModelError, match="2 inputs"):
        Explainer.from_onnx(onnx_models.two_inputs())
    with pytest.raises(LayerNotFoundError, match="did you mean.*block_add"):
        Explainer.from_onnx(onnx_models.TF_STYLE, "block_ad", input_layout="nhwc")
    with pytest.raises(LayerShapeError, match="'pooled'.*not a spatial map"):
        Explainer.from_onnx(onnx_models.TF_STYLE, "pooled", input_layout="nhwc")
    with pytest.raises(OnnxModelError, match="input_layout must be"):
        Explainer.from_onnx(onnx_models.TF_STYLE, input_layout="chw")
    exp = Explainer.from_onnx(onnx_models.TF_STYLE, input_layout="nhwc")
    with pytest.raises(InputError, match="float32"):
        exp(np.zeros((1, 16, 16, 3)))  # float64
    with pytest.raises(InputError):
        exp(np.zeros((1, 3, 16, 16), np.float32))  # NCHW given to an NHWC model


def test_layers_lists_4d_tensors_and_normalising_keeps_the_source():
    model = read_model(onnx_models.TF_STYLE)
    before = model.SerializeToString()
    names = [t.name for t in spatial_tensors(normalise(model))]
    assert names == ["nchw", "stem_conv", "stem", "group_conv", "group_relu6", "block_add", "proj", "features"]
    assert model.SerializeToString() == before


@pytest.mark.slow
def test_a_graph_with_the_batch_baked_in_runs_in_chunks_and_exports_with_its_batch(tmp_path):
    """torch's dynamo exporter decomposes convnext's flatten into a Gather over the batch-1 elements;
    no rewrite frees that batch, so the explainer runs such files one image at a time."""
    exp = torchvision_explainer("convnext_tiny", "dynamo")
    assert exp.fixed_batch == 1 and torchvision_explainer("resnet18", "dynamo").fixed_batch is None
    x = random_input(3, 64, seed=2)
    together = exp(x, [1, 2, 3])
    alone = [exp(x[i:i + 1], [i + 1]) for i in range(3)]
    torch.testing.assert_close(together.cams, torch.cat([a.cams for a in alone]))
    with pytest.raises(ExportError, match="dynamic_batch=False"):
        export.to_onnx(exp, tmp_path / "dynamic.onnx", x[:1])
    export.to_onnx(exp, tmp_path / "static.onnx", x[:1], dynamic_batch=False)
    got = export.load(tmp_path / "static.onnx")(x[:1], [4])
    assert float((got.cams - exp(x[:1], [4]).cams).abs().max()) <= 1e-4
