"""explainer.methods: every method against the independent float64 formulas of tests/reference.py, on seven architectures."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from explainer import Explainer, MethodError
from explainer.methods import METHODS, exportable_methods
from tests import reference
from tests.helpers import ARCHITECTURES, random_input, seeded_model

SIZE = 96
TARGETS = [1, 7]


@functools.cache
def oracle(arch: str, layer: str):
    model = seeded_model(arch)
    x = random_input(2, SIZE if not arch.startswith("efficientnet-lite") else 224, seed=3)
    A, G, _ = reference.activations_and_gradients(model, layer, x, TARGETS)
    return x, A, G


@functools.cache
def base_explainer(arch: str, layer: str) -> Explainer:
    return Explainer(seeded_model(arch), layer, "gradcam")


def assert_close(raw: np.ndarray, ref: np.ndarray) -> None:
    scale = max(np.abs(ref).max(), 1e-12)
    err = np.abs(raw - ref).max()
    assert err <= 1e-4 * scale, f"max abs diff {err:.3g} > 1e-4 x max {scale:.3g}"


#: every one-graph method of the registry (cam and the perturbation methods have tests of their own)
ONE_GRAPH = exportable_methods()
#: methods whose map is a channel sum of contributions, which eigen_smooth replaces
SMOOTHABLE = tuple(n for n in ONE_GRAPH if METHODS[n].weights is not None or METHODS[n].contributions is not None)


def test_every_method_has_a_reference_formula():
    missing = [n for n in ONE_GRAPH if n not in reference.FORMULAS]
    missing += [n for n in SMOOTHABLE if n not in reference.CONTRIBUTIONS]
    assert not missing, f"add the float64 formula of {missing} to tests/reference.py"


@pytest.mark.parametrize("method", ONE_GRAPH)
@pytest.mark.parametrize("arch,layer", ARCHITECTURES, ids=[a for a, _ in ARCHITECTURES])
def test_method_matches_float64_reference(arch, layer, method):
    x, A, G = oracle(arch, layer)
    exp = base_explainer(arch, layer).with_method(method)
    result = exp(x, TARGETS)
    expected = reference.FORMULAS[method](A, G)
    assert result.raw.shape == expected.shape
    assert result.raw.dtype == torch.float32
    assert_close(result.raw.double().numpy(), expected)
    assert result.cams.shape == (2, x.shape[-2], x.shape[-1])
    assert 0.0 <= float(result.cams.min()) and float(result.cams.max()) <= 1.0


@pytest.mark.parametrize("arch,layer", [("resnet18", "layer4"), ("efficientnet_b0", "features")])
def test_cam_matches_classifier_weights(arch, layer):
    model = seeded_model(arch)
    x, A, _ = oracle(arch, layer)
    fc = model.fc if arch == "resnet18" else model.classifier[1]
    W = fc.weight.detach().double().numpy()
    result = base_explainer(arch, layer).with_method("cam")(x, TARGETS)
    assert_close(result.raw.double().numpy(), reference.cam(A, W, TARGETS))


@pytest.mark.parametrize("arch,layer", [a for a in ARCHITECTURES if a[0] not in ("resnet18", "efficientnet_b0")],
                         ids=[a for a, _ in ARCHITECTURES if a not in ("resnet18", "efficientnet_b0")])
def test_cam_refuses_heads_that_are_not_pool_plus_linear(arch, layer):
    with pytest.raises(MethodError, match="global average pooling"):
        base_explainer(arch, layer).with_method("cam")


@pytest.mark.parametrize("method", SMOOTHABLE)
@pytest.mark.parametrize("arch,layer", [("resnet18", "layer4"), ("efficientnet-lite0", "_conv_head")],
                         ids=["resnet18", "efficientnet-lite0"])
def test_eigen_smooth_is_the_first_component_of_the_contributions(arch, layer, method):
    x, A, G = oracle(arch, layer)
    result = base_explainer(arch, layer).with_method(method)(x, TARGETS, eigen_smooth=True)
    assert_close(result.raw.double().numpy(), reference.first_component(reference.CONTRIBUTIONS[method](A, G)))


def test_eigen_smooth_leaves_eigencam_alone():
    x, _, _ = oracle("resnet18", "layer4")
    exp = base_explainer("resnet18", "layer4").with_method("eigencam")
    torch.testing.assert_close(exp(x, TARGETS, eigen_smooth=True).raw, exp(x, TARGETS).raw, rtol=0, atol=0)
