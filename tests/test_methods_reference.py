"""Every method against the independent float64 formulas of tests/reference.py, on seven architectures."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from explainer import Explainer, MethodError
from tests import reference
from tests.conftest import ARCHITECTURES, random_input, seeded_model

SIZE = 96
TARGETS = [1, 7]


@functools.lru_cache(maxsize=None)
def oracle(arch: str, layer: str):
    model = seeded_model(arch)
    x = random_input(2, SIZE if not arch.startswith("efficientnet-lite") else 224, seed=3)
    A, G, _ = reference.activations_and_gradients(model, layer, x, TARGETS)
    return x, A, G


@functools.lru_cache(maxsize=None)
def base_explainer(arch: str, layer: str) -> Explainer:
    return Explainer(seeded_model(arch), layer, "gradcam")


def assert_close(raw: np.ndarray, ref: np.ndarray) -> None:
    scale = max(np.abs(ref).max(), 1e-12)
    err = np.abs(raw - ref).max()
    assert err <= 1e-4 * scale, f"max abs diff {err:.3g} > 1e-4 x max {scale:.3g}"


@pytest.mark.parametrize("method", list(reference.FORMULAS))
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
