"""explainer.core, explainer.checks, explainer.scoring: bad input: a specific error that names the problem and what is allowed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from explainer import (
    DeployCamError,
    Explainer,
    GradModeError,
    InputError,
    LayerNotFoundError,
    LayerShapeError,
    MethodError,
    ModelOutputError,
    TargetError,
)
from tests.helpers import random_input, seeded_model


@pytest.fixture(scope="module")
def exp():
    return Explainer(seeded_model("resnet18"), "layer4")


def test_unknown_layer_lists_close_matches():
    with pytest.raises(LayerNotFoundError, match=r"layer5.*closest:.*layer4"):
        Explainer(seeded_model("resnet18"), "layer5")


def test_unknown_layer_typo_in_a_nested_name():
    with pytest.raises(LayerNotFoundError, match=r"layer4\.1\.conv1"):
        Explainer(seeded_model("resnet18"), "layer4.1.cnv1")


def test_layer_without_a_spatial_map(exp):
    with pytest.raises(LayerShapeError, match=r"not a spatial \(N, C, h, w\) map.*reshape"):
        Explainer(seeded_model("resnet18"), "fc")(random_input(1, 64))
    with pytest.raises(LayerShapeError, match="1x1 map has no spatial extent"):
        Explainer(seeded_model("resnet18"), "avgpool")(random_input(1, 64))


@pytest.mark.parametrize(
    "x, pattern",
    [
        (torch.randn(3, 64, 64), r"4-D \(N, C, H, W\).*unsqueeze"),
        (torch.randn(1, 1, 64, 64), "1 channels but the model's first convolution expects 3"),
        (torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8), "dtype is torch.uint8"),
        (torch.randn(1, 3, 64, 64, dtype=torch.float64), "does not match the model's torch.float32"),
        (torch.randn(0, 3, 64, 64), "empty"),
        (torch.full((1, 3, 64, 64), float("nan")), "NaN or inf"),
        (torch.full((1, 3, 64, 64), float("inf")), "NaN or inf"),
        (torch.randn(1, 3, 64, 64, device="meta"), "is on meta but the model is on cpu"),
        ([[1.0]], "must be a torch.Tensor"),
    ],
    ids=["3d", "channels", "uint8", "float64", "empty", "nan", "inf", "device", "list"],
)
def test_bad_inputs(exp, x, pattern):
    with pytest.raises(InputError, match=pattern):
        exp(x)


def test_too_small_input_is_reported_not_a_deep_traceback():
    exp = Explainer(seeded_model("vgg11"), "features")
    with pytest.raises(InputError, match=r"could not run on an input of shape \(1, 3, 8, 8\)"):
        exp(torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize(
    "targets, pattern",
    [
        (1000, r"out of range.*\[0, 1000\)"),
        (-1, "out of range"),
        ([1, 2, 3], "3 targets for a batch of 2"),
        (torch.tensor([0.5, 1.0]), "integer class indices"),
        (torch.zeros(2, 2, 2, dtype=torch.long), r"\(N,\) or \(N, K\)"),
        ("cat", "must be None, an int"),
    ],
    ids=["too-high", "negative", "length", "float", "rank3", "str"],
)
def test_bad_targets(exp, targets, pattern):
    with pytest.raises(TargetError, match=pattern):
        exp(random_input(2, 64), targets)


def test_topk_out_of_range(exp):
    with pytest.raises(TargetError, match="topk"):
        exp(random_input(1, 64), topk=0)


def test_unknown_method_lists_them():
    with pytest.raises(MethodError, match=r"did you mean gradcam.*known methods: gradcam, gradcam\+\+"):
        Explainer(seeded_model("resnet18"), "layer4", "gradcamm")


def test_inference_mode_is_refused_with_advice(exp):
    with torch.inference_mode(), pytest.raises(GradModeError, match="no_grad"):
        exp(random_input(1, 64))


class DictNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        logits = self.fc(self.conv(x).mean(dim=(2, 3)))
        return {"out": logits, "aux": logits.sum(1)}


def test_ambiguous_dict_output_lists_its_entries():
    with pytest.raises(ModelOutputError, match=r"'out': a tensor \(1, 3\), 'aux': a tensor \(1,\).*output_key"):
        Explainer(DictNet().eval(), "conv")(random_input(1, 16))
    with pytest.raises(ModelOutputError, match=r"output_key 'logits' does not fit"):
        Explainer(DictNet().eval(), "conv", output_key="logits")(random_input(1, 16))
    with pytest.raises(ModelOutputError, match=r"needs an output with the batch first"):
        Explainer(DictNet().eval(), "conv", output_key="aux")(random_input(1, 16))
    assert Explainer(DictNet().eval(), "conv", output_key="out")(random_input(1, 16)).cams.shape == (1, 16, 16)


def test_non_differentiable_head_from_parts():
    conv = nn.Conv2d(3, 4, 3).eval()
    exp = Explainer.from_parts(conv, lambda a: a.detach().mean(dim=(2, 3)))
    with pytest.raises(DeployCamError, match="differentiable head"):
        exp(random_input(1, 16))


def test_training_mode_warns():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.warns(UserWarning, match="training mode"):
        Explainer(model, "0")


def test_errors_are_value_errors_too():
    assert issubclass(LayerNotFoundError, ValueError) and issubclass(InputError, ValueError)


def test_model_built_under_inference_mode_is_explained_clearly():
    with torch.inference_mode():
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.Linear(4, 2)).eval()
    with pytest.raises(GradModeError, match="created under torch.inference_mode"):
        Explainer(model, "0")
    Explainer(model, "0", "eigencam")(random_input(1, 8))  # no gradient needed: fine


# -- gaps found probing the landed code (reliability issue) ---------------------------------------


@pytest.mark.parametrize("options,match", [
    ({"max_channels": True}, "max_channels"),
    ({"max_channels": 0}, "max_channels"),
    ({"batch_size": True}, "batch_size"),
    ({"progress": "yes"}, "progress"),
])
def test_option_types_are_checked_up_front(options, match):
    with pytest.raises(MethodError, match=match):
        Explainer(seeded_model("resnet18"), "layer4", "scorecam", **options)


@pytest.mark.parametrize("targets", [2**64, -(2**64), [2**64, 1], [2**63, 1]])
def test_huge_targets_are_target_errors(exp, targets):
    with pytest.raises(TargetError, match=r"\[0, 1000\)|integer"):
        exp(random_input(2, 64), targets)


def test_channels_last_on_a_channels_first_layer_is_refused():
    exp = Explainer(seeded_model("resnet18"), "layer3", reshape="channels_last")
    with pytest.raises(LayerShapeError, match=r"already channels-first, so drop reshape="):
        exp(random_input(1, 64))


def test_misspelt_leaf_module_names_are_refused():
    with pytest.raises(LayerNotFoundError, match=r"leaf_modules names 'layer4.0.downsampl'.*closest:.*downsample"):
        Explainer(seeded_model("resnet18"), "layer4", leaf_modules=["layer4.0.downsampl"])
    Explainer(seeded_model("resnet18"), "layer4", leaf_modules=["layer4.0.downsample"])  # the right name works


class ZeroScoreNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.fc.weight[1].zero_()
            self.fc.bias[1] = 0.0

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def test_ablation_with_a_zero_target_score_says_so():
    exp = Explainer(ZeroScoreNet().eval(), "conv", "ablationcam", progress=False)
    with pytest.raises(MethodError, match=r"target score .* is exactly 0.*undefined"):
        exp(torch.randn(1, 3, 8, 8), 1)


def test_list_layers_on_a_model_that_cannot_take_the_probe_input():
    from explainer import list_layers

    model = seeded_model("resnet18")
    with pytest.raises(InputError, match=r"could not run on a zero probe input of shape \(1, 4, 64, 64\).*input_size="):
        list_layers(model, (1, 4, 64, 64))


def test_default_layer_skips_4d_tensors_that_are_not_maps():
    """timm's vit_tiny: blocks.11.attn.k_norm is (N, heads, tokens, dim), not a map of the image."""
    timm = pytest.importorskip("timm")
    from explainer.layers import default_layer

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    layer = default_layer(vit)
    assert layer == "patch_embed.proj"  # the only (N, C, h, w) map of the image; tokens need reshape=
    assert Explainer(vit, layer)(torch.randn(1, 3, 224, 224)).raw.shape == (1, 14, 14)
    head_only = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2)).eval()
    with pytest.raises(LayerShapeError, match=r"no module with a spatial.*reshape='tokens'"):
        default_layer(head_only, (1, 3, 8, 8))
    convnet = timm.create_model("resnet18", pretrained=False).eval()
    assert default_layer(convnet, (1, 3, 64, 64)) == "layer4"


def test_a_list_of_class_targets_reports_its_classes(exp):
    from explainer import ClassTarget

    result = exp(random_input(2, 64), [ClassTarget(281), ClassTarget(3)])
    assert result.targets.tolist() == [281, 3]
    assert exp(random_input(2, 64), ClassTarget(281)).targets.tolist() == [281, 281]


def test_model_switched_to_training_after_construction_warns():
    model = seeded_model("resnet18")
    exp = Explainer(model, "layer4")
    try:
        model.train()
        with pytest.warns(UserWarning, match="training mode: explaining it changes the model"):
            exp(random_input(2, 64))
    finally:
        model.eval()
