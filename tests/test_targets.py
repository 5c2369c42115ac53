"""explainer.scoring: target forms, and K targets per image in one call equal K single-target calls."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explainer import Explainer
from explainer.methods import exportable_methods
from tests.helpers import random_input, seeded_model


@pytest.fixture(scope="module")
def exp():
    return Explainer(seeded_model("resnet18"), "layer4", "gradcam")


@pytest.mark.parametrize("method", exportable_methods(linear_head=True))  # resnet18 @ layer4: pool + linear
def test_k_targets_equal_k_single_calls(exp, method):
    m = exp.with_method(method)
    x = random_input(3, 64)
    targets = torch.tensor([[0, 5, 9], [2, 2, 7], [999, 1, 4]])
    multi = m(x, targets)
    assert multi.raw.shape[:2] == (3, 3) and multi.cams.shape == (3, 3, 64, 64)
    assert torch.equal(multi.targets, targets)
    for k in range(3):
        single = m(x, targets[:, k])
        torch.testing.assert_close(multi.raw[:, k], single.raw, rtol=1e-5, atol=1e-6 * float(single.raw.abs().max()))
        torch.testing.assert_close(multi.cams[:, k], single.cams, rtol=1e-4, atol=1e-5)


def test_target_forms_agree(exp):
    x = random_input(2, 64)
    by_tensor = exp(x, torch.tensor([3, 4]))
    assert by_tensor.targets.shape == (2,) and by_tensor.raw.shape == (2, 2, 2)
    for same in ([3, 4], (3, 4), np.array([3, 4]), torch.tensor([3, 4], dtype=torch.int32)):
        torch.testing.assert_close(exp(x, same).raw, by_tensor.raw, rtol=0, atol=0)
    everyone = exp(x, 3)
    assert everyone.targets.tolist() == [3, 3]
    nested = exp(x, [[3], [4]])
    assert nested.raw.shape == (2, 1, 2, 2)
    torch.testing.assert_close(nested.raw[:, 0], by_tensor.raw, rtol=0, atol=0)


def test_default_target_is_argmax(exp):
    x = random_input(2, 64)
    result = exp(x)
    assert result.targets.tolist() == result.logits.argmax(1).tolist()


def test_topk_explains_best_classes_first(exp):
    x = random_input(2, 64)
    result = exp(x, topk=3)
    assert result.targets.shape == (2, 3)
    assert torch.equal(result.targets, result.logits.topk(3, dim=1).indices)


def test_explanation_numpy_helpers(exp):
    result = exp(random_input(2, 64))
    arrays = result.numpy()
    assert arrays["cams"].shape == (2, 64, 64) and arrays["cams"].dtype == np.float32
    np.testing.assert_allclose(arrays["probabilities"].sum(1), 1.0, rtol=1e-5)
    assert result.cam_numpy(1).shape == (64, 64)
    assert len(result) == 2


def test_aug_smooth_averages_the_six_augmentations_mapped_back(exp):
    x = random_input(2, 64)
    targets = torch.tensor([3, 4])
    smooth = exp(x, targets, aug_smooth=True)
    maps = []
    for flip in (False, True):
        for factor in (0.9, 1.0, 1.1):
            xa = x * factor
            r = exp(xa.flip(-1) if flip else xa, targets)
            maps.append(r.cams.flip(-1) if flip else r.cams)
    torch.testing.assert_close(smooth.cams, torch.stack(maps).mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(smooth.logits, exp(x, targets).logits)


def test_aug_smooth_is_mirror_equivariant(exp):
    """The augmentation set is closed under flipping, so smoothing a mirrored image mirrors the map."""
    x = random_input(1, 64)
    direct = exp(x, 5, aug_smooth=True).cams
    mirrored = exp(x.flip(-1), 5, aug_smooth=True).cams.flip(-1)
    torch.testing.assert_close(direct, mirrored, rtol=1e-4, atol=1e-5)
