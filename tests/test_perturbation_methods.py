"""explainer.methods.ablationcam, .scorecam, .reciprocam: Ablation-CAM and Score-CAM against plain
float64 loops over channels, ReciproCAM against a plain float64 loop over positions (and
pytorch-grad-cam if installed)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from explainer import Explainer, MethodError
from explainer.methods import perturbation_methods
from tests import reference
from tests.helpers import calibrated_model, random_input, seeded_model


def float64_model_with_layer_output(model, layer):
    """A float64 copy whose `layer` output can be replaced (forward hook: test-only oracle)."""
    m = copy.deepcopy(model).double().eval()
    state = {}

    def hook(_module, _inputs, output):
        state["A"] = output.detach().clone()
        return state["replace"].clone() if "replace" in state else output

    m.get_submodule(layer).register_forward_hook(hook)
    return m, state


def ablation_reference(model, layer, x, target):
    m, state = float64_model_with_layer_output(model, layer)
    with torch.no_grad():
        base = float(m(x.double())[0, target])
        A = state["A"]
        weights = []
        for c in range(A.shape[1]):  # a plain loop: one full forward per channel
            ablated = A.clone()
            ablated[:, c] = 0
            state["replace"] = ablated
            weights.append((base - float(m(x.double())[0, target])) / base)
    return reference.weighted(np.array([weights]), A.numpy())


def score_reference(model, layer, x, target):
    m, state = float64_model_with_layer_output(model, layer)
    with torch.no_grad():
        m(x.double())
        A = state["A"]
        scores = []
        for c in range(A.shape[1]):
            up = F.interpolate(A[:, c:c + 1], size=x.shape[-2:], mode="bilinear", align_corners=True)
            span = up.max() - up.min()
            mask = (up - up.min()) / span if span > 0 else torch.zeros_like(up)
            scores.append(float(m(x.double() * mask)[0, target]))
    weights = torch.tensor(scores).softmax(0).numpy()
    return reference.weighted(weights[None], A.numpy())


def recipro_reference(model, layer, x, target):
    """ReciproCAM as the paper states it, written independently: for each position (i, j), the whole
    float64 model with the layer's output replaced by A * g, g the 3x3 Gaussian centred at (i, j)
    (1/4, 1/8 edges, 1/16 corners, cropped at the border); the map is softmax(logits)[target]."""
    m, state = float64_model_with_layer_output(model, layer)
    kernel = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16.0
    with torch.no_grad():
        m(x.double())
        A = state["A"]
        h, w = A.shape[-2:]
        out = np.zeros((h, w))
        for i in range(h):
            for j in range(w):
                g = np.zeros((h + 2, w + 2))
                g[i:i + 3, j:j + 3] = kernel  # centred at (i + 1, j + 1) of the padded grid
                state["replace"] = A * torch.from_numpy(g[1:-1, 1:-1])
                out[i, j] = float(m(x.double()).softmax(dim=1)[0, target])
        del state["replace"]
    return out[None]


def close(raw, expected, tol=1e-4):
    assert raw.shape == expected.shape
    assert np.abs(raw - expected).max() <= tol * np.abs(expected).max()


@pytest.mark.parametrize("layer", ["layer4", pytest.param("layer3", marks=pytest.mark.slow)])
def test_ablationcam_matches_a_float64_loop(layer):
    """Weights are (S - S_c) / S with S_c close to S: float32 cancellation allows ~1e-3, not 1e-4."""
    model = calibrated_model("resnet18")
    x = random_input(1, 64, seed=8)
    result = Explainer(model, layer, "ablationcam", batch_size=100)(x, 3)
    close(result.raw.double().numpy(), ablation_reference(model, layer, x, 3), tol=1e-3)


@pytest.mark.parametrize("arch,layer", [("resnet18", "layer4"), ("mobilenet_v3_small", "features"),
                                        pytest.param("densenet121", "features", marks=pytest.mark.slow)])
def test_reciprocam_matches_a_float64_loop(arch, layer):
    model = calibrated_model(arch)
    x = random_input(1, 96, seed=8)
    result = Explainer(model, layer, "reciprocam", batch_size=5, progress=False)(x, 3)
    close(result.raw.double().numpy(), recipro_reference(model, layer, x, 3), tol=1e-5)
    assert result.cams.shape == (1, 96, 96)


def test_reciprocam_scores_target_callables_without_softmax():
    """With a target callable the map is the callable's score itself (no class axis to softmax over)."""
    from explainer import ClassTarget

    model = calibrated_model("resnet18")
    x = random_input(1, 64, seed=8)
    exp = Explainer(model, "layer4", "reciprocam", progress=False)
    by_class = exp(x, 3).raw
    by_callable = exp(x, ClassTarget(3)).raw
    assert not torch.allclose(by_class, by_callable)
    m, state = float64_model_with_layer_output(model, "layer4")
    with torch.no_grad():
        m(x.double())
        state["replace"] = state["A"] * 0.25 * (torch.arange(4).reshape(2, 2) == 0)  # position (0, 0), cropped
        state["replace"][..., 0, 1] = state["A"][..., 0, 1] / 8
        state["replace"][..., 1, 0] = state["A"][..., 1, 0] / 8
        state["replace"][..., 1, 1] = state["A"][..., 1, 1] / 16
        expected = float(m(x.double())[0, 3])
    assert abs(float(by_callable[0, 0, 0]) - expected) <= 1e-5 * abs(expected) + 1e-6


@pytest.mark.slow
def test_scorecam_matches_a_float64_loop():
    model = calibrated_model("resnet18")
    x = random_input(1, 64, seed=8)
    result = Explainer(model, "layer4", "scorecam", batch_size=128)(x, 3)
    close(result.raw.double().numpy(), score_reference(model, "layer4", x, 3))


@pytest.mark.parametrize("method", perturbation_methods())
def test_batch_size_and_k_targets_do_not_change_the_map(method):
    model = calibrated_model("resnet18")
    x = random_input(2, 64, seed=9)
    small = Explainer(model, "layer4", method, batch_size=7)(x, [[1, 2], [3, 4]])
    big = Explainer(model, "layer4", method, batch_size=512)(x, [[1, 2], [3, 4]])
    # different batch sizes take different float32 GEMM paths; ablation weights are differences of
    # nearly equal scores, so allow 1e-3 of the map's maximum
    tol = 1e-3 * float(big.raw.abs().max())
    torch.testing.assert_close(small.raw, big.raw, rtol=0, atol=tol)
    single = Explainer(model, "layer4", method, batch_size=64)(x, [2, 4])
    torch.testing.assert_close(big.raw[:, 1], single.raw, rtol=0, atol=tol)


def test_scorecam_max_channels_keeps_the_strongest_channels():
    model = calibrated_model("resnet18")
    x = random_input(1, 64, seed=8)
    full = Explainer(model, "layer4", "scorecam", batch_size=128)(x, 3)
    few = Explainer(model, "layer4", "scorecam", batch_size=128, max_channels=64)(x, 3)
    assert few.raw.shape == full.raw.shape
    a = full.cams.flatten()
    b = few.cams.flatten()
    assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.5  # same picture, cheaper


def test_perturbation_options_are_checked():
    model = calibrated_model("resnet18")
    with pytest.raises(MethodError, match="batch_size must be an integer >= 1"):
        Explainer(model, "layer4", "ablationcam", batch_size=0)
    with pytest.raises(MethodError, match="max_channels"):
        Explainer(model, "layer4", "scorecam", max_channels=0)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("method", ["ablationcam", "scorecam"])
def test_agrees_with_pytorch_grad_cam(method):
    pgc = pytest.importorskip("pytorch_grad_cam", reason="the bench extra (pytorch-grad-cam) is not installed")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = calibrated_model("resnet18")
    x = random_input(1, 64, seed=8)
    ours = Explainer(model, "layer4", method, batch_size=128)(x, 3).cams[0].numpy()
    peer_model = copy.deepcopy(model)
    cls = pgc.AblationCAM if method == "ablationcam" else pgc.ScoreCAM
    with cls(model=peer_model, target_layers=[peer_model.layer4]) as cam:
        cam.batch_size = 128
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(3)])[0]
    assert correlation(ours, theirs) >= 0.99


def test_options_belong_to_the_method():
    from explainer.methods import get_method

    model = seeded_model("resnet18")
    x = random_input(1, 64)
    by_method = Explainer(model, "layer4", get_method("scorecam").with_options(batch_size=64, max_channels=8),
                          progress=False)
    by_explainer = Explainer(model, "layer4", "scorecam", batch_size=64, max_channels=8, progress=False)
    assert (by_method.batch_size, by_method.max_channels) == (64, 8) == (by_explainer.batch_size,
                                                                         by_explainer.max_channels)
    assert torch.equal(by_method(x, [3]).raw, by_explainer(x, [3]).raw)
    assert by_explainer.with_method("ablationcam").batch_size == 64  # the explainer's choice carries over
    assert get_method("scorecam").max_channels is None  # the registry's method is unchanged
