"""Multi-layer CAM for classifiers (``Explainer(model, [layers])``) against a float64 restatement of
pytorch-grad-cam's rule, and against pytorch-grad-cam itself when the bench extra is installed."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from explainer import Explainer, LayerNotFoundError
from explainer.multilayer import MultiLayerExplainer
from tests import reference
from tests.helpers import calibrated_model, random_input

CASES = [("resnet18", ["layer2", "layer3", "layer4"]), ("mobilenet_v3_small", ["features.9", "features.12"])]


def combined_reference(model, layers, x, targets, method):
    """Each layer's float64 map (A, G from hooks), ReLU'd, min-max normalised, resized bilinearly to the
    input; the mean over layers, min-max normalised again."""
    height, width = x.shape[-2:]
    resized = []
    for layer in layers:
        A, G, _ = reference.activations_and_gradients(model, layer, x, targets)
        m = np.maximum(reference.FORMULAS[method](A, G), 0)  # (N, h, w)
        lo, hi = m.min(axis=(1, 2), keepdims=True), m.max(axis=(1, 2), keepdims=True)
        m = (m - lo) / (hi - lo + 1e-7)
        resized.append(F.interpolate(torch.from_numpy(m)[:, None], size=(height, width), mode="bilinear",
                                     align_corners=False)[:, 0].numpy())
    mean = np.mean(resized, axis=0)
    lo, hi = mean.min(axis=(1, 2), keepdims=True), mean.max(axis=(1, 2), keepdims=True)
    return (mean - lo) / (hi - lo + 1e-7)


@pytest.mark.parametrize("method", ["gradcam", "layercam"])
@pytest.mark.parametrize(("arch", "layers"), CASES)
def test_multi_layer_cam_matches_the_float64_rule(arch, layers, method):
    model = calibrated_model(arch)
    x = random_input(2, 64, seed=3)
    exp = Explainer(model, layers, method)
    assert isinstance(exp, MultiLayerExplainer) and exp.layers == layers
    result = exp(x, [1, 7])
    expected = combined_reference(model, layers, x, [1, 7], method)
    assert result.cams.shape == (2, 64, 64) and result.raw is None and result.layer == "+".join(layers)
    assert np.abs(result.cams.double().numpy() - expected).max() <= 1e-4
    top = exp(x)  # every layer explains the first layer's argmax
    assert torch.equal(top.targets, top.logits.argmax(1))
    k = exp.with_method("hirescam")(x, topk=2)
    assert k.cams.shape == (2, 2, 64, 64) and k.method == "hirescam"


def test_multi_layer_errors_name_the_layer():
    model = calibrated_model("resnet18")
    with pytest.raises(LayerNotFoundError, match="layer5"):
        Explainer(model, ["layer4", "layer5"])
    with pytest.raises(LayerNotFoundError, match="empty"):
        Explainer(model, [])


def test_multi_layer_agrees_with_pytorch_grad_cam():
    pgc = pytest.importorskip("pytorch_grad_cam", reason="the bench extra (pytorch-grad-cam) is not installed")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = calibrated_model("resnet18")
    x = random_input(1, 64, seed=4)
    ours = Explainer(model, ["layer3", "layer4"], "gradcam")(x, 5).cams[0].numpy()
    peer = copy.deepcopy(model)
    with pgc.GradCAM(peer, target_layers=[peer.layer3, peer.layer4]) as cam:
        theirs = cam(x, targets=[ClassifierOutputTarget(5)])[0]
    assert np.abs(ours - theirs).max() <= 1e-3


def test_multi_layer_explainers_are_not_exported(tmp_path):
    import export
    from explainer.errors import ExportError

    exp = Explainer(calibrated_model("resnet18"), ["layer3", "layer4"])
    with pytest.raises(ExportError, match="one Explainer per layer"):
        export.to_onnx(exp, tmp_path / "x.onnx", random_input(1, 64))
