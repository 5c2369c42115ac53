"""explainer.metrics: faithfulness metrics against hand-computed tiny cases."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from explainer import Explainer, InputError
from explainer.metrics import average_drop, deletion_auc, increase_in_confidence, insertion_auc


class SumModel(nn.Module):
    """Two classes: logit 0 = sum of all pixel values, logit 1 = 0."""

    def forward(self, x):
        s = x.sum(dim=(1, 2, 3))
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def p0(total: float) -> float:
    """softmax([total, 0])[0]"""
    return 1 / (1 + math.exp(-total))


# one image 1 x 1 x 2 x 2 with pixel values 1, 2, 3, 4 (row-major); the map ranks them 4 > 2 > 1 > 3
IMAGE = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
MAP = torch.tensor([[[0.5, 0.7], [0.1, 0.9]]])


def test_deletion_by_hand():
    # zero baseline, 4 steps: remove 4, then 2, then 1, then 3 -> sums 10, 6, 4, 3, 0
    sums = [10, 6, 4, 3, 0]
    ps = [p0(s) for s in sums]
    expected = sum((a + b) / 2 * 0.25 for a, b in zip(ps, ps[1:]))
    got = deletion_auc(SumModel(), IMAGE, MAP, torch.tensor([0]), steps=4, baseline="zero")
    assert got.shape == (1,) and float(got[0]) == pytest.approx(expected, rel=1e-6)


def test_insertion_by_hand_with_mean_baseline():
    # mean baseline 2.5 everywhere; insert 4, 2, 1, 3 in turn -> sums 10, 11.5, 11, 9.5, 10
    sums = [10, 11.5, 11, 9.5, 10]
    ps = [p0(s) for s in sums]
    expected = sum((a + b) / 2 * 0.25 for a, b in zip(ps, ps[1:]))
    got = insertion_auc(SumModel(), IMAGE, MAP, [0], steps=4, baseline="mean")
    assert float(got[0]) == pytest.approx(expected, rel=1e-6)


def test_average_drop_and_increase_by_hand():
    # original sum 10; masked sum 1*.5 + 2*.7 + 3*.1 + 4*.9 = 5.8
    y, o = p0(10), p0(5.8)
    assert average_drop(SumModel(), IMAGE, MAP, [0]) == pytest.approx((y - o) / y * 100, rel=1e-5)
    assert increase_in_confidence(SumModel(), IMAGE, MAP, [0]) == 0.0
    # class 1 gains when the image is dimmed: p1 rises, so no drop and 100% increase
    assert average_drop(SumModel(), IMAGE, MAP, [1]) == 0.0
    assert increase_in_confidence(SumModel(), IMAGE, MAP, [1]) == 100.0


def test_metrics_rank_a_real_map_above_its_inverse(lite0, photo_batch):
    """On the real model, Grad-CAM's map deletes faster and inserts faster than its inverse."""
    x = photo_batch[:1]
    cams = Explainer(lite0, "_conv_head")(x).cams
    target = [285]
    assert deletion_auc(lite0, x, cams, target, steps=8) < deletion_auc(lite0, x, 1 - cams, target, steps=8)
    assert insertion_auc(lite0, x, cams, target, steps=8) > insertion_auc(lite0, x, 1 - cams, target, steps=8)


def test_metric_inputs_are_checked():
    with pytest.raises(InputError, match=r"maps must be \(N, H, W\)"):
        deletion_auc(SumModel(), IMAGE, MAP[:, :1], [0])
    with pytest.raises(InputError, match="steps"):
        deletion_auc(SumModel(), IMAGE, MAP, [0], steps=0)
    with pytest.raises(InputError, match="baseline"):
        insertion_auc(SumModel(), IMAGE, MAP, [0], baseline="noise")
    with pytest.raises(InputError, match="2 targets for 1 images"):
        average_drop(SumModel(), IMAGE, MAP, [0, 1])


# -- ROAD ---------------------------------------------------------------------------------------

class MeanModel(nn.Module):
    """Two classes: logit 0 = mean pixel value, logit 1 = 0."""

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([m, torch.zeros_like(m)], dim=1)


# a 3 x 3 image with values 0..8 (row-major); the map ranks (0,0) first, (0,1) second, the centre last
GRID = torch.arange(9.0).reshape(1, 1, 3, 3)
GRID_MAP = torch.tensor([[[0.9, 0.8, 0.5], [0.5, 0.1, 0.5], [0.5, 0.5, 0.5]]])


def test_noisy_linear_imputation_by_hand():
    from explainer.imputation import noisy_linear_impute

    image = GRID[0]
    centre = torch.zeros(3, 3, dtype=torch.bool)
    centre[1, 1] = True
    # centre: (1 + 3 + 5 + 7) / 6 + (0 + 2 + 6 + 8) / 12, over weights 4/6 + 4/12 = 1 -> 4
    assert float(noisy_linear_impute(image, centre, noise=0)[0, 1, 1]) == pytest.approx(4.0)
    corner = torch.zeros(3, 3, dtype=torch.bool)
    corner[0, 0] = True
    # corner: (1/6 * 1 + 1/6 * 3 + 1/12 * 4) / (1/6 + 1/6 + 1/12) = 2.4
    assert float(noisy_linear_impute(image, corner, noise=0)[0, 0, 0]) == pytest.approx(2.4)
    two = corner.clone()
    two[0, 1] = True
    # 5x = 2y + 10 and 8y = 2x + 20 (see test_road_by_hand) -> x = y = 10/3
    filled = noisy_linear_impute(image, two, noise=0)
    assert filled[0, 0, :2].tolist() == pytest.approx([10 / 3, 10 / 3])
    noisy = noisy_linear_impute(image, two, noise=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy[0][~two], image[0][~two]) and not torch.equal(noisy, filled)


def test_road_by_hand():
    # MoRF 1/9: (0,0) imputed 2.4 -> mean (36 + 2.4) / 9; MoRF 2/9: (0,0), (0,1) both 10/3 ->
    # mean (36 - 1 + 20/3) / 9. LeRF 1/9: the centre, imputed 4 -> mean 4.
    def p(mean):
        return 1 / (1 + math.exp(-mean))

    from explainer.metrics import road, road_combined, road_curve

    model, target = MeanModel(), torch.tensor([0])
    curve = road_curve(model, GRID, GRID_MAP, target, "morf", fractions=(1 / 9, 2 / 9), noise=0)
    assert curve[0].tolist() == pytest.approx([p(38.4 / 9), p((35 + 20 / 3) / 9)], rel=1e-6)
    assert float(road(model, GRID, GRID_MAP, target, "morf", (1 / 9, 2 / 9), noise=0)[0]) == \
        pytest.approx((p(38.4 / 9) + p((35 + 20 / 3) / 9)) / 2, rel=1e-6)
    assert float(road(model, GRID, GRID_MAP, target, "lerf", (1 / 9,), noise=0)[0]) == pytest.approx(p(4.0))
    combined = road_combined(model, GRID, GRID_MAP, target, (1 / 9,), noise=0)
    assert float(combined[0]) == pytest.approx((p(4.0) - p(38.4 / 9)) / 2, abs=1e-6)  # float32 difference


def test_road_is_reproducible_and_checks_its_arguments():
    from explainer.metrics import road

    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    maps = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(1))
    model = MeanModel()
    first = road(model, x, maps, [0, 0], fractions=(0.3, 0.6), seed=3)
    assert torch.equal(first, road(model, x, maps, [0, 0], fractions=(0.3, 0.6), seed=3))
    with pytest.raises(InputError, match="order must be 'morf'"):
        road(model, x, maps, [0, 0], order="most")
    with pytest.raises(InputError, match=r"fractions must be .* in \[0, 1\)"):
        road(model, x, maps, [0, 0], fractions=(0.5, 2))


# -- defects found probing the landed code (reliability issue) -------------------------------------


@pytest.mark.parametrize("metric", ["deletion", "insertion", "road", "average_drop", "increase"])
def test_minus_one_targets_are_refused_with_what_to_pass(metric):
    from explainer import TargetError
    from explainer.metrics import road

    call = {
        "deletion": lambda t: deletion_auc(SumModel(), IMAGE, MAP, t, steps=4, baseline="zero"),
        "insertion": lambda t: insertion_auc(SumModel(), IMAGE, MAP, t, steps=4, baseline="zero"),
        "road": lambda t: road(SumModel(), IMAGE, MAP, t, fractions=(0.5,)),
        "average_drop": lambda t: average_drop(SumModel(), IMAGE, MAP, t),
        "increase": lambda t: increase_in_confidence(SumModel(), IMAGE, MAP, t),
    }[metric]
    with pytest.raises(TargetError, match=r"-1 is not a class index.*pass the class indices"):
        call(torch.tensor([-1]))
    with pytest.raises(TargetError, match=r"target 2 is out of range: the model has 2 classes"):
        call(torch.tensor([2]))


def test_road_refuses_removing_every_pixel():
    from explainer.metrics import road_curve

    with pytest.raises(InputError, match=r"\[0, 1\)"):
        road_curve(SumModel(), IMAGE, MAP, [0], fractions=(0.5, 1.0))


def test_road_of_an_image_does_not_depend_on_its_batch():
    from explainer.metrics import road

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    images, maps = torch.rand(3, 3, 12, 12), torch.rand(3, 12, 12)
    alone = road(model, images[2:], maps[2:], [1], fractions=(0.3, 0.6))
    batched = road(model, images, maps, [0, 2, 1], fractions=(0.3, 0.6))
    assert float(batched[2]) == float(alone[0])


def test_average_drop_survives_a_probability_that_underflows_in_float32():
    class Confident(nn.Module):
        def forward(self, x):  # class 1 is 200 logits behind: p = e^-200, 0 in float32
            s = x.sum(dim=(1, 2, 3))
            return torch.stack([s + 200.0, s], dim=1)

    drop = average_drop(Confident(), IMAGE, MAP, torch.tensor([1]))
    assert math.isfinite(drop) and drop >= 0.0


def test_deletion_builds_at_most_batch_size_images_at_once():
    seen = []

    class Recording(SumModel):
        def forward(self, x):
            seen.append(x.shape[0])
            return super().forward(x)

    full = deletion_auc(SumModel(), IMAGE, MAP, torch.tensor([0]), steps=4, baseline="zero")
    chunked = deletion_auc(Recording(), IMAGE, MAP, torch.tensor([0]), steps=4, baseline="zero", batch_size=2)
    assert max(seen) == 2 and sum(seen) == 5
    assert float(chunked[0]) == pytest.approx(float(full[0]), rel=1e-12)
