"""explainer.reshape: vision transformers through ``reshape``: token layers (ViT) and channels-last stages (Swin),
against the float64 oracle, plus the reshape errors."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from explainer import Explainer, LayerShapeError, MethodError
from explainer.methods import gradient_methods
from explainer.reshape import ChannelsLast, TokenGrid
from tests import reference
from tests.helpers import random_input

GRADIENT_METHODS = gradient_methods()


@functools.cache
def tiny_vit() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                    hidden_dim=32, mlp_dim=64, num_classes=10).eval()


@functools.cache
def tiny_swin() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2],
                                                  window_size=[4, 4], num_classes=10).eval()


@functools.cache
def torchvision_model(name: str) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torchvision.models.get_model(name, weights=None).eval()


VIT_LAYER = "encoder.layers.encoder_layer_1.ln_1"


def check_against_reference(model, layer, reshape, to_grid, method, size, targets=(1, 7), tol=1e-4):
    x = random_input(2, size, seed=3)
    result = Explainer(model, layer, method, reshape=reshape)(x, list(targets))
    A, G = reference.activations_and_score_gradients(
        model, layer, x, lambda out: out[torch.arange(2), torch.tensor(targets)], to_grid)
    ref = reference.FORMULAS[method](A, G)
    scale = max(np.abs(ref).max(), 1e-12)
    assert np.abs(result.raw.double().numpy() - ref).max() <= tol * scale
    assert result.cams.shape == (2, size, size)
    return result


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_vit_tokens_match_float64_reference(method):
    result = check_against_reference(tiny_vit(), VIT_LAYER, "tokens", reference.vit_tokens_to_grid, method, 32)
    assert result.raw.shape == (2, 4, 4)  # 1 class token + 16 patches -> 4 x 4


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_swin_channels_last_matches_float64_reference(method):
    # this random Swin's maps are sums over channels of terms ~1000x larger than the result, so
    # float32 cancellation shows at ~1.5e-4 of the maximum (HiResCAM): 1e-3 here, 1e-4 elsewhere
    result = check_against_reference(tiny_swin(), "features", "channels_last", reference.channels_last_to_grid,
                                     method, 32, tol=1e-3)
    assert result.raw.shape == (2, 4, 4)


def test_eigencam_and_scorecam_run_through_reshape():
    x = random_input(2, 32)
    eigen = Explainer(tiny_vit(), VIT_LAYER, "eigencam", reshape="vit")(x)
    A = reference.vit_tokens_to_grid(
        reference.activations_and_score_gradients(tiny_vit(), VIT_LAYER, x, lambda out: out[:, 0])[0])
    # after a LayerNorm each token's channel mean is ~0, so the sign rule (correlate with the channel
    # mean) has nothing to go on: accept either sign of the component
    errors = [np.abs(eigen.raw.double().numpy() - reference.eigencam(sign * A, None)).max(axis=(1, 2))
              for sign in (1, -1)]
    scale = max(np.abs(reference.eigencam(sign * A, None)).max() for sign in (1, -1))
    assert np.minimum(*errors).max() <= 1e-4 * scale
    score = Explainer(tiny_swin(), "features", "scorecam", reshape="swin", progress=False)(x)
    assert score.raw.shape == (2, 4, 4) and bool(torch.isfinite(score.cams).all())


@pytest.mark.slow
@pytest.mark.parametrize("name,layer,reshape,to_grid,grid", [
    ("vit_b_16", "encoder.layers.encoder_layer_11.ln_1", "tokens", reference.vit_tokens_to_grid, (14, 14)),
    ("swin_t", "features", "channels_last", reference.channels_last_to_grid, (7, 7)),
])
def test_torchvision_vit_b_16_and_swin_t(name, layer, reshape, to_grid, grid):
    result = check_against_reference(torchvision_model(name), layer, reshape, to_grid, "gradcam", 224)
    assert tuple(result.raw.shape[-2:]) == grid


def test_token_grid_inference_for_non_square_inputs_and_prefix_tokens():
    tokens = torch.arange(2 * (2 + 6) * 3, dtype=torch.float32).reshape(2, 8, 3)
    grid = TokenGrid()(tokens, (20, 30))  # 2 prefix tokens + 2 x 3 patches for a 2:3 image
    assert grid.shape == (2, 3, 2, 3)
    assert torch.equal(grid[0, :, 0, 0], tokens[0, 2])
    assert torch.equal(grid[1, :, 1, 2], tokens[1, 7])
    assert TokenGrid(grid=(3, 2))(tokens, (30, 20)).shape == (2, 3, 3, 2)
    assert TokenGrid(prefix_tokens=0).layout(9, (10, 10)) == (0, 3, 3)


# -- bad input -------------------------------------------------------------------------------

def test_grid_that_does_not_fit_names_the_expected_one():
    exp = Explainer(tiny_vit(), VIT_LAYER, "gradcam", reshape=TokenGrid(grid=(5, 5)))
    with pytest.raises(LayerShapeError, match=r"17 tokens, which do not fit grid 5x5.*expected grid for this "
                                              r"input: 4x4 with 1 prefix token"):
        exp(random_input(1, 32))


def test_token_count_that_fits_no_grid():
    exp = Explainer(tiny_vit(), VIT_LAYER, "gradcam", reshape=TokenGrid(prefix_tokens=0))
    with pytest.raises(LayerShapeError, match=r"17 tokens, which fit no h x w grid.*TokenGrid\(grid="):
        exp(random_input(1, 32))


def test_token_layer_without_reshape_points_to_it():
    with pytest.raises(LayerShapeError, match=r"\(1, 17, 32\), not a spatial.*reshape="):
        Explainer(tiny_vit(), VIT_LAYER, "gradcam")(random_input(1, 32))


def test_channels_last_layer_without_reshape_warns():
    with pytest.warns(UserWarning, match="looks channels-last"):
        Explainer(torchvision_model("swin_t"), "features", "gradcam")(random_input(1, 224))


def test_ablationcam_cannot_run_through_reshape_and_unknown_names_are_listed():
    with pytest.raises(MethodError, match="cannot run through reshape"):
        Explainer(tiny_vit(), VIT_LAYER, "ablationcam", reshape="tokens")
    with pytest.raises(LayerShapeError, match="unknown reshape 'token'; use one of tokens, vit"):
        Explainer(tiny_vit(), VIT_LAYER, "gradcam", reshape="token")
    with pytest.raises(LayerShapeError, match=r"ChannelsLast needs \(N, h, w, C\)"):
        Explainer(tiny_vit(), VIT_LAYER, "gradcam", reshape=ChannelsLast())(random_input(1, 32))


def test_reshape_explainers_are_not_exported_yet(tmp_path):
    import export
    from explainer import ExportError

    exp = Explainer(tiny_vit(), VIT_LAYER, "gradcam", reshape="tokens")
    with pytest.raises(ExportError, match="reshape= .* not exportable yet"):
        export.to_onnx(exp, tmp_path / "vit.onnx", random_input(2, 32))
