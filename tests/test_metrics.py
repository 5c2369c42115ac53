"""Faithfulness metrics against hand-computed tiny cases."""

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
