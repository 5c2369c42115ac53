"""explainer.core and export on CUDA: every method, the runtimes and the error paths on a GPU, against the CPU results.

Skipped without a CUDA device. TF32 is switched off for these tests (PyTorch allows it for
cuDNN convolutions by default, which changes conv outputs by ~1e-3 relative), so that CPU and
GPU differ only by float32 summation order.
"""

from __future__ import annotations

import copy
import threading
import warnings

import pytest
import torch

import export
from explainer import Explainer
from explainer.errors import InputError
from explainer.methods import METHODS
from tests.helpers import calibrated_model

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(autouse=True)
def no_tf32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def pair(arch: str = "resnet18", layer: str = "layer4", method: str = "gradcam", **options):
    cpu_model = calibrated_model(arch)
    gpu_model = copy.deepcopy(cpu_model).cuda()
    return Explainer(cpu_model, layer, method, **options), Explainer(gpu_model, layer, method, **options)


def images(n: int = 3, size: int = 64, seed: int = 5) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_on_cuda_matches_cpu(method):
    options = {"max_channels": 64, "progress": False} if method == "scorecam" else {"progress": False}
    cpu, gpu = pair(method=method, **options)
    x = images()
    want = cpu(x, targets=[[1, 7], [2, 3], [0, 5]])
    got = gpu(x.cuda(), targets=torch.tensor([[1, 7], [2, 3], [0, 5]]))
    assert got.cams.is_cuda and got.targets.is_cuda
    assert torch.equal(got.targets.cpu(), want.targets)
    # ablation weights are differences of nearly equal scores: summation order shows at 1e-4
    tol = 1e-3 if method == "ablationcam" else 1e-4
    assert float((got.cams.cpu() - want.cams).abs().max()) <= tol
    assert torch.allclose(got.logits.cpu(), want.logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch,layer", [("densenet121", "features"), ("efficientnet_b0", "features"),
                                        ("mobilenet_v3_small", "features"), ("resnet18", "layer3")])
def test_architectures_on_cuda_match_cpu(arch, layer):
    cpu, gpu = pair(arch, layer, "gradcam++")
    x = images()
    want, got = cpu(x), gpu(x.cuda())
    assert torch.equal(got.targets.cpu(), want.targets)
    assert float((got.cams.cpu() - want.cams).abs().max()) <= 1e-4


def test_smoothing_and_no_grad_on_cuda():
    cpu, gpu = pair(method="layercam")
    x = images(2)
    want = cpu(x, aug_smooth=True, eigen_smooth=True)
    with torch.no_grad():
        got = gpu(x.cuda(), aug_smooth=True, eigen_smooth=True)
        assert not torch.is_grad_enabled()
    assert float((got.cams.cpu() - want.cams).abs().max()) <= 1e-4


def test_cpu_input_to_a_cuda_model_is_a_clear_error():
    _, gpu = pair()
    with pytest.raises(InputError, match=r"input is on cpu but the model is on cuda"):
        gpu(images(1))


def test_threads_share_one_cuda_explainer():
    _, gpu = pair(method="gradcam++")
    xs = [images(2, seed=s).cuda() for s in range(6)]
    want = [gpu(x).cams for x in xs]
    got: list = [None] * len(xs)

    def work(i: int) -> None:
        got[i] = gpu(xs[i]).cams

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_explain_close_to_float32(dtype):
    """Reduced precision is what GPU deployments run: maps stay within a few 1e-2 of float32."""
    _, gpu = pair(method="gradcam")
    half = Explainer(copy.deepcopy(calibrated_model("resnet18")).cuda().to(dtype), "layer4", "gradcam")
    x = images(2).cuda()
    want, got = gpu(x), half(x.to(dtype))
    assert got.cams.dtype == dtype and bool(torch.isfinite(got.cams.float()).all())
    assert float((got.cams.float() - want.cams).abs().max()) <= 0.1
    with pytest.raises(InputError, match="does not match the model"):
        half(x)


@pytest.mark.parametrize("part", ["full", "head"])
def test_torchscript_on_cuda_matches_eager(part, tmp_path):
    _, gpu = pair("resnet18", "layer3", "gradcam++")
    x = images(3).cuda()
    export.to_torchscript(gpu, tmp_path / "g.pt", x[:2], part=part)
    runtime = export.load(tmp_path / "g.pt", device="cuda")
    eager = gpu(x)
    if part == "full":
        result = runtime(x)
        want = eager.cams
    else:
        with torch.no_grad():
            activations = gpu.backbone(x)[0]
        result = runtime(activations)
        from explainer import normalize_maps

        want = normalize_maps(eager.raw)
    assert result.cams.is_cuda
    assert float((result.cams - want).abs().max()) <= 1e-4
    assert torch.equal(result.targets, eager.targets)


def test_real_model_on_cuda(photo_batch):
    cpu = Explainer(calibrated_model("efficientnet-lite0"), "_conv_head", "gradcam")
    gpu = Explainer(copy.deepcopy(calibrated_model("efficientnet-lite0")).cuda(), "_conv_head", "gradcam")
    want, got = cpu(photo_batch), gpu(photo_batch.cuda())
    assert got.targets.tolist() == want.targets.tolist()
    assert got.targets[1].item() == 967  # coffee: espresso
    assert float((got.cams.cpu() - want.cams).abs().max()) <= 1e-4


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_graphs_exported_from_a_cuda_model(fmt, tmp_path):
    """Export straight from a CUDA model; ONNX runs on ONNX Runtime's CUDA provider when installed
    (onnxruntime-gpu), else on its CPU provider after a warning; TorchScript runs on the GPU."""
    _, gpu = pair("resnet18", "layer3", "gradcam")
    x = images(3).cuda()
    path = tmp_path / ("g.onnx" if fmt == "onnx" else "g.pt")
    (export.to_onnx if fmt == "onnx" else export.to_torchscript)(gpu, path, x[:2])
    eager = gpu(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the CPU fallback warning, when onnxruntime-gpu is absent
        if fmt == "onnx":  # ONNX Runtime's CUDA provider uses TF32 by default, like PyTorch; off here
            runtime = export.load(path, providers=[("CUDAExecutionProvider", {"use_tf32": 0}),
                                                   "CPUExecutionProvider"])
        else:
            runtime = export.load(path, device="cuda")
    result = runtime(x)
    assert float((result.cams.cpu() - eager.cams.cpu()).abs().max()) <= 1e-4
    assert torch.allclose(result.logits.cpu(), eager.logits.cpu(), rtol=1e-4, atol=1e-4)
    assert torch.equal(result.targets.cpu(), eager.targets.cpu())


def test_bad_values_on_cuda_raise_clear_errors_not_device_asserts():
    """Range and NaN checks of CUDA tensors are read once at the end of the call (one sync):
    an out-of-range CUDA target must still raise TargetError, never a device-side assert."""
    from explainer import TargetError

    _, gpu = pair()
    x = images(2).cuda()
    with pytest.raises(TargetError, match=r"target class 1000 is out of range"):
        gpu(x, targets=torch.tensor([3, 1000], device="cuda"))
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN or inf"):
        gpu(bad)
    assert gpu(x, targets=torch.tensor([3, 999], device="cuda")).cams.shape == (2, 64, 64)  # still usable


def test_target_callables_and_reshape_on_cuda():
    from explainer.target_functions import ClassTarget

    cpu, gpu = pair(method="layercam")
    x = images(2)
    want = cpu(x, ClassTarget([1, 2]))
    got = gpu(x.cuda(), ClassTarget(torch.tensor([1, 2], device="cuda")))
    assert float((got.cams.cpu() - want.cams).abs().max()) <= 1e-4
    import torchvision

    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                               hidden_dim=32, mlp_dim=64, num_classes=10).eval()
    layer = "encoder.layers.encoder_layer_1.ln_1"
    want = Explainer(vit, layer, "gradcam", reshape="tokens")(images(2, 32))
    got = Explainer(copy.deepcopy(vit).cuda(), layer, "gradcam", reshape="tokens")(images(2, 32).cuda())
    assert float((got.cams.cpu() - want.cams).abs().max()) <= 1e-4


def test_onnx_runtime_cuda_provider_matches_eager(tmp_path):
    """With onnxruntime-gpu: the graph runs on ONNX Runtime's CUDA provider (TF32 off, like eager here)."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed")
    _, gpu = pair("resnet18", "layer3", "layercam")
    x = images(3).cuda()
    export.to_onnx(gpu, tmp_path / "g.onnx", x[:2])
    runtime = export.load(tmp_path / "g.onnx", providers=[("CUDAExecutionProvider", {"use_tf32": 0}),
                                                          "CPUExecutionProvider"], strict=True)
    assert runtime.backend == "onnxruntime/CUDAExecutionProvider"
    eager = gpu(x, [1, 2, 3])
    result = runtime(x, [1, 2, 3])
    assert result.cams.is_cuda and result.logits.is_cuda  # IO binding: the maps stay on the GPU
    assert float((result.cams - eager.cams).abs().max()) <= 1e-4
    assert torch.allclose(result.logits, eager.logits, rtol=1e-4, atol=1e-4)
    # ONNX Runtime's CUDA graphs: recorded per input shape, replayed with new inputs
    graphed = export.load(tmp_path / "g.onnx", providers=[("CUDAExecutionProvider", {"use_tf32": 0}),
                                                          "CPUExecutionProvider"], strict=True, cuda_graph=True)
    for seed in (1, 2, 3):
        x = images(3, seed=seed).cuda()
        eager, result = gpu(x, [1, 2, 3]), graphed(x, [1, 2, 3])
        assert float((result.cams - eager.cams).abs().max()) <= 1e-4
    assert graphed(x[:2]).cams.shape == (2, 64, 64)  # a second shape: its own graph


def test_aoti_package_compiled_for_cuda_matches_eager(tmp_path):
    """An AOTInductor package compiled from a CUDA example runs on the GPU (and refuses the CPU)."""
    from explainer.errors import ExportError

    _, gpu = pair("resnet18", "layer3", "gradcam")
    x = images(3).cuda()
    export.to_aoti(gpu, tmp_path / "g.pt2", x[:2])
    runtime = export.load(tmp_path / "g.pt2", device="cuda")
    assert runtime.backend == "aoti/cuda"
    for targets in (None, [1, 2, 3]):
        eager, result = gpu(x, targets), runtime(x, targets)
        assert result.cams.is_cuda
        assert float((result.cams - eager.cams).abs().max()) <= 1e-4
        assert torch.equal(result.targets.cpu(), eager.targets.cpu())
    with pytest.raises(ExportError, match="compiled for cuda"):
        export.load(tmp_path / "g.pt2", device="cpu")
