"""explainer.targets: targets beyond a class index: ClassTarget, SegmentationTarget, SimilarityTarget, per-image callables,
output_key, against the float64 oracle and the class-index path."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from explainer import Explainer, MethodError, ModelOutputError, TargetError
from explainer.target_functions import ClassTarget, SegmentationTarget, SimilarityTarget
from tests import reference
from tests.helpers import calibrated_model, random_input, seeded_model

SEGMENTATION = [("fcn_resnet50", "backbone.layer4"), ("deeplabv3_mobilenet_v3_large", "backbone.16")]


@functools.cache
def segmentation_model(name: str) -> nn.Module:
    """FCN-ResNet50 with seeded weights; the MobileNet one calibrated (its default statistics shrink
    activations to ~1e-18)."""
    if name.startswith("deeplabv3_mobilenet"):
        return calibrated_model(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torchvision.models.get_model(name, weights=None, weights_backbone=None).eval()


@functools.cache
def embedding_model() -> nn.Module:
    model = torchvision.models.resnet18()
    model.load_state_dict(seeded_model("resnet18").state_dict())
    model.fc = nn.Identity()
    return model.eval()


def region(size: int = 64) -> torch.Tensor:
    mask = torch.zeros(size, size)
    mask[8:40, 16:48] = 1
    return mask


def assert_matches(raw: torch.Tensor, ref: np.ndarray) -> None:
    scale = max(np.abs(ref).max(), 1e-12)
    assert np.abs(raw.double().numpy() - ref).max() <= 1e-4 * scale


def test_class_target_equals_class_indices(resnet18):
    exp = Explainer(resnet18, "layer4", "gradcam++")
    x = random_input(3, 64)
    want = exp(x, [1, 5, 9])
    got = exp(x, ClassTarget([1, 5, 9]))
    assert torch.equal(got.cams, want.cams) and torch.equal(got.targets, want.targets)
    assert torch.equal(exp(x, ClassTarget(4)).cams, exp(x, 4).cams)


def test_per_image_callables_follow_pytorch_grad_cams_convention(resnet18):
    """Each callable gets one image's output without the batch axis and returns a scalar."""
    exp = Explainer(resnet18, "layer4", "layercam")
    x = random_input(2, 64)
    got = exp(x, [lambda out: out[3], lambda out: out[8]])
    assert torch.equal(got.cams, exp(x, [3, 8]).cams)
    assert torch.equal(got.targets, torch.tensor([-1, -1]))
    mixed = exp(x, [ClassTarget(3), lambda out: out[8]])  # our Targets keep their batch axis
    assert torch.equal(mixed.cams, got.cams)


@pytest.mark.parametrize("arch,layer", SEGMENTATION, ids=[a for a, _ in SEGMENTATION])
@pytest.mark.parametrize("method", ["gradcam", "hirescam"])  # a weight and an element-wise method (all: test_methods_reference)
def test_segmentation_target_matches_float64_reference(arch, layer, method):
    model = segmentation_model(arch)
    x = random_input(2, 64, seed=4)
    mask = region()
    result = Explainer(model, layer, method)(x, SegmentationTarget(5, mask))
    A, G = reference.activations_and_score_gradients(
        model, layer, x, lambda out: (out["out"][:, 5] * mask.double()).sum(dim=(-2, -1)))
    assert_matches(result.raw, reference.FORMULAS[method](A, G))
    assert result.logits.shape == (2, 21, 64, 64)  # the "out" entry, picked automatically
    assert torch.equal(result.targets, torch.tensor([-1, -1]))


def test_per_image_masks_and_perturbation_methods_use_the_right_image():
    model = segmentation_model("fcn_resnet50")
    x = random_input(2, 64, seed=4)
    masks = torch.stack([region(), region().flip(0)])
    exp = Explainer(model, "backbone.layer4", "gradcam")
    both = exp(x, SegmentationTarget(2, masks))
    for n in range(2):
        alone = exp(x[n:n + 1], SegmentationTarget(2, masks[n]))
        assert torch.allclose(both.cams[n], alone.cams[0], atol=1e-5)
    # Ablation-CAM runs batches of copies of one image: the mask of that image must be used.
    ablation = Explainer(segmentation_model("deeplabv3_mobilenet_v3_large"), "backbone.16", "ablationcam",
                         batch_size=480, progress=False)
    both = ablation(x, SegmentationTarget(2, masks))
    alone = ablation(x[1:], SegmentationTarget(2, masks[1]))
    wrong = ablation(x[1:], SegmentationTarget(2, masks[0]))
    scale = float(alone.raw.abs().max())
    # ablation weights are differences of nearly equal scores: batch-size-dependent float32 noise
    # shows at ~2e-3 here; using the other image's mask changes the map by ~100%.
    assert float((both.raw[1] - alone.raw[0]).abs().max()) <= 1e-2 * scale
    assert float((wrong.raw[0] - alone.raw[0]).abs().max()) >= 0.3 * scale


def test_ablationcam_with_a_segmentation_target_matches_a_plain_loop():
    """w_c = (S - S_c) / S with S = masked class-logit sum, one full forward per channel (float64)."""
    model = segmentation_model("deeplabv3_mobilenet_v3_large")
    x = random_input(1, 64, seed=4)
    mask = region()
    got = Explainer(model, "backbone.16", "ablationcam", progress=False)(x, SegmentationTarget(1, mask))
    exp64 = Explainer(copy.deepcopy(model).double(), "backbone.16", "gradcam")
    with torch.no_grad():
        a, *skips = exp64.backbone(x.double())

        def score(acts):
            return float((exp64.head(acts, *skips)["out"][0, 1] * mask.double()).sum())

        base = score(a)
        weights = []
        for c in range(a.shape[1]):
            ablated = a.clone()
            ablated[:, c] = 0
            weights.append((base - score(ablated)) / base)
    ref = np.maximum((np.array(weights)[:, None, None] * a[0].numpy()).sum(0), 0)
    scale = np.abs(ref).max()
    assert np.abs(got.raw[0].double().numpy() - ref).max() <= 1e-3 * scale


def test_similarity_target_matches_float64_reference():
    model = embedding_model()
    x = random_input(2, 64, seed=6)
    reference_embedding = torch.randn(512, generator=torch.Generator().manual_seed(2))
    result = Explainer(model, "layer4", "gradcam")(x, SimilarityTarget(reference_embedding))
    A, G = reference.activations_and_score_gradients(
        model, "layer4", x, lambda out: F.cosine_similarity(out, reference_embedding.double()[None], dim=1))
    assert_matches(result.raw, reference.gradcam(A, G))
    assert result.logits.shape == (2, 512)
    per_image = Explainer(model, "layer4", "gradcam")(x, SimilarityTarget(torch.stack([reference_embedding] * 2)))
    assert torch.allclose(per_image.cams, result.cams)


def test_aug_smooth_flips_segmentation_masks():
    model = segmentation_model("fcn_resnet50")
    x = random_input(1, 64, seed=4)
    exp = Explainer(model, "backbone.layer4", "gradcam")
    target = SegmentationTarget(3, region())
    assert torch.equal(target.flipped().mask, region().flip(-1))
    smoothed = exp(x, target, aug_smooth=True)
    assert smoothed.cams.shape == (1, 64, 64) and bool(torch.isfinite(smoothed.cams).all())


def test_output_key_selects_an_entry():
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.a, self.b = nn.Linear(8, 4), nn.Linear(8, 6)

        def forward(self, x):
            f = self.conv(x).mean(dim=(2, 3))
            return self.a(f), self.b(f)

    model = TwoHeads().eval()
    x = random_input(2, 16)
    first = Explainer(model, "conv", output_key=0)(x)
    second = Explainer(model, "conv", output_key=1)(x)
    chosen = Explainer(model, "conv", output_key=lambda out: out[1])(x)
    assert first.logits.shape == (2, 4) and second.logits.shape == (2, 6)
    assert torch.equal(second.cams, chosen.cams)
    with pytest.raises(ModelOutputError, match=r"a tuple of 2 .*output_key"):
        Explainer(model, "conv")(x)


# -- bad input -------------------------------------------------------------------------------

def test_mask_of_the_wrong_shape_names_the_expected_one():
    exp = Explainer(segmentation_model("fcn_resnet50"), "backbone.layer4", "gradcam")
    with pytest.raises(TargetError, match=r"mask is \(32, 32\) but the model output's spatial size is \(64, 64\)"):
        exp(random_input(1, 64), SegmentationTarget(1, torch.ones(32, 32)))
    with pytest.raises(TargetError, match=r"3 masks for a batch of 2"):
        exp(random_input(2, 64), SegmentationTarget(1, torch.ones(3, 64, 64)))
    with pytest.raises(TargetError, match=r"\(H, W\) or \(N, H, W\)"):
        SegmentationTarget(1, torch.ones(64))
    with pytest.raises(TargetError, match=r"class 30 is out of range.*21 classes"):
        exp(random_input(1, 64), SegmentationTarget(30, torch.ones(64, 64)))


def test_class_indices_on_a_segmentation_output_point_to_target_callables():
    exp = Explainer(segmentation_model("fcn_resnet50"), "backbone.layer4", "gradcam")
    with pytest.raises(TargetError, match="SegmentationTarget"):
        exp(random_input(1, 64))


def test_target_callable_must_return_one_scalar_per_image(resnet18):
    exp = Explainer(resnet18, "layer4", "gradcam")
    with pytest.raises(TargetError, match=r"returned \(2, 1000\) for a batch of 2 images.*shape \(2,\)"):
        exp(random_input(2, 64), lambda out: out)
    with pytest.raises(TargetError, match=r"per-image target callables must return one scalar"):
        exp(random_input(2, 64), [lambda out: out, lambda out: out])
    with pytest.raises(TargetError, match=r"2 target callables for a batch of 3"):
        exp(random_input(3, 64), [lambda out: out[0], lambda out: out[1]])
    with pytest.raises(TargetError, match="either targets or topk"):
        exp(random_input(2, 64), ClassTarget(1), topk=2)
    with pytest.raises(TargetError, match=r"ClassTarget class 5000 is out of range"):
        exp(random_input(2, 64), ClassTarget(5000))


def test_target_that_ignores_the_output_is_not_differentiable(resnet18):
    exp = Explainer(resnet18, "layer4", "gradcam")
    with pytest.raises(MethodError, match="do not depend on the layer's activations"):
        exp(random_input(1, 64), lambda out: torch.ones(out.shape[0]))


def test_similarity_embedding_of_the_wrong_size():
    exp = Explainer(embedding_model(), "layer4", "gradcam")
    with pytest.raises(TargetError, match=r"embedding has 128 values but the model output has 512"):
        exp(random_input(1, 64), SimilarityTarget(torch.randn(128)))


def test_segmentation_models_are_not_exported_and_runtimes_refuse_callables(tmp_path, resnet18):
    import export
    from explainer import ExportError

    exp = Explainer(segmentation_model("fcn_resnet50"), "backbone.layer4", "gradcam")
    with pytest.raises(ExportError, match=r"returns dict; exported graphs explain classifiers"):
        export.to_torchscript(exp, tmp_path / "seg.pt", random_input(2, 64))
    export.to_torchscript(Explainer(resnet18, "layer4", "gradcam"), tmp_path / "r.pt", random_input(2, 64))
    with pytest.raises(TargetError, match="target callables .* need the eager Explainer"):
        export.load(tmp_path / "r.pt")(random_input(1, 64), ClassTarget(3))
