"""explainer.overlay, explainer.postprocess, explainer.imaging: normalisation, overlays, grids, preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from explainer import InputError, make_grid, normalize_maps, overlay, upsample_maps
from explainer.imaging import Preprocess, load_image
from explainer.overlay import COLORMAPS, colorize, save_png


def test_all_zero_map_stays_zero():
    out = normalize_maps(torch.zeros(2, 3, 4, 5))
    assert torch.equal(out, torch.zeros(2, 3, 4, 5))


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, (2, 3, 4), elements=st.floats(0, 1e6, width=32)))
def test_normalised_maps_are_finite_and_in_unit_range(raw):
    out = normalize_maps(torch.from_numpy(raw))
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    up = upsample_maps(out.unsqueeze(0), 16, 8)
    assert up.shape == (1, 2, 16, 8) and up.min() >= 0 and up.max() <= 1


def test_normalisation_formula():
    raw = torch.tensor([[[1.0, 3.0], [2.0, 5.0]]])
    expected = (raw - 1.0) / (4.0 + 1e-7)
    torch.testing.assert_close(normalize_maps(raw), expected)


def test_overlay_shape_and_blend():
    image = np.full((32, 48, 3), 100, np.uint8)
    cam = np.zeros((4, 6), np.float32)
    out = overlay(image, cam, "jet", alpha=0.0)
    assert out.shape == (32, 48, 3) and out.dtype == np.uint8 and (out == 100).all()
    full = overlay(image, torch.ones(32, 48), "jet", alpha=1.0)
    assert (full == colorize(np.ones((32, 48)), "jet")).all()


@pytest.mark.parametrize("name", ["jet", "turbo", "viridis", "COLORMAP_INFERNO"])
def test_colormaps_by_name(name):
    assert overlay(np.zeros((8, 8, 3), np.uint8), np.random.rand(8, 8), name).shape == (8, 8, 3)
    assert "jet" in COLORMAPS


def test_overlay_rejects_bad_arguments():
    with pytest.raises(InputError, match="unknown colormap"):
        overlay(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8)), "rainbowz")
    with pytest.raises(InputError, match="alpha"):
        overlay(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8)), alpha=2)
    with pytest.raises(InputError, match="single"):
        overlay(np.zeros((8, 8, 3), np.uint8), np.zeros((2, 8, 8)))


def test_grid_has_one_tile_per_map_plus_the_image():
    grid = make_grid(np.zeros((40, 30, 3), np.uint8), [np.zeros((5, 5))] * 3, ["a", "b", "a very long caption"])
    assert grid.shape[1] == 30 * 4 and grid.shape[0] > 40


def test_preprocess_crop_and_squash(photos):
    cat = photos["chelsea"]  # 300 x 451
    x, view = Preprocess()(cat)
    assert x.shape == (3, 224, 224) and view.shape == (224, 224, 3)
    assert abs(float(x.mean())) < 3
    _, squashed = Preprocess(resize="squash")(cat)
    assert squashed.shape == (224, 224, 3)
    with pytest.raises(InputError):
        Preprocess(resize="stretch")


def test_load_image_round_trip_and_errors(tmp_path, photos):
    path = tmp_path / "c.png"
    save_png(str(path), photos["coffee"])
    assert np.array_equal(load_image(path), photos["coffee"])  # RGB in, RGB out
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_text("text")
    with pytest.raises(InputError, match="not an image"):
        load_image(tmp_path / "bad.png")
