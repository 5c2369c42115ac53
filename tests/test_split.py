"""explainer.split: the fx split: head(backbone(x)) equals the model, skips are passed, names resolve."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from explainer import Explainer, LayerNotFoundError, TraceError, split_model
from tests import reference
from tests.helpers import random_input, seeded_model

CASES = [
    ("resnet18", "layer4"),
    ("resnet18", "layer3"),
    ("resnet18", "layer4.0.bn2"),  # inside a residual block: the block input is a skip
    ("resnet18", "layer4.1.add"),  # a node name, not a module
    ("densenet121", "features.denseblock4"),
    ("densenet121", "features.denseblock3.denselayer5"),  # DenseNet's earlier features are skips
    ("mobilenet_v3_small", "features.9"),
    ("efficientnet_b0", "features.6"),
    ("convnext_tiny", "features.5"),
    ("efficientnet-lite0", "_conv_head"),
    ("efficientnet-lite0", "_swish_1"),
]


@pytest.mark.parametrize("arch,layer", CASES, ids=[f"{a}:{b}" for a, b in CASES])
def test_head_of_backbone_is_the_model(arch, layer):
    model = seeded_model(arch)
    split = split_model(model, layer)
    x = random_input(2, 224 if "lite" in arch else 64)
    with torch.no_grad():
        expected = model(x)
        activations, *skips = split.backbone(x)
        logits = split.head(activations.clone(), *skips)
    assert activations.ndim == 4
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)


def test_skips_are_named_inside_residual_blocks():
    split = split_model(seeded_model("resnet18"), "layer4.0.bn2")
    assert len(split.skip_names) == 1  # the block's input (through the downsample branch)
    assert split_model(seeded_model("resnet18"), "layer4").skip_names == ()


def test_gradient_inside_a_residual_block_matches_the_oracle():
    model = seeded_model("resnet18")
    x = random_input(2, 64)
    A, G, _ = reference.activations_and_gradients(model, "layer4.0.bn2", x, [3, 4])
    result = Explainer(model, "layer4.0.bn2", "hirescam")(x, [3, 4])
    expected = reference.hirescam(A, G)
    assert abs(result.raw.double().numpy() - expected).max() <= 1e-4 * abs(expected).max()


def test_module_object_and_name_give_the_same_split():
    model = seeded_model("resnet18")
    x = random_input(1, 64)
    a = Explainer(model, model.layer4)(x)
    b = Explainer(model, "layer4")(x)
    assert a.layer == b.layer == "layer4"
    torch.testing.assert_close(a.raw, b.raw, rtol=0, atol=0)


def test_split_shares_parameters_instead_of_copying():
    model = seeded_model("resnet18")
    split = split_model(model, "layer4")
    assert split.head.fc.weight is model.fc.weight
    assert split.backbone.conv1.weight is model.conv1.weight


class Branchy(nn.Module):
    """A model fx cannot trace: Python control flow on a tensor value."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > 0:
            y = y * 2
        return self.fc(y.mean(dim=(2, 3)))


class Gate(nn.Module):
    def forward(self, y):
        return y * 2 if y.sum() > 0 else y


class GatedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.gate = Gate()
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(self.gate(self.conv(x)).mean(dim=(2, 3)))


def test_untraceable_model_says_how_to_proceed():
    with pytest.raises(TraceError, match="from_parts"):
        split_model(Branchy().eval(), "conv")


def test_leaf_modules_make_control_flow_traceable():
    model = GatedNet().eval()
    with pytest.raises(TraceError, match="leaf_modules"):
        Explainer(model, "conv")
    exp = Explainer(model, "conv", leaf_modules=["gate"])
    x = random_input(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(exp(x).logits, model(x))


def test_from_parts_explains_an_untraceable_model():
    model = Branchy().eval()

    def head(a):
        a = a * 2 if a.sum() > 0 else a
        return model.fc(a.mean(dim=(2, 3)))

    exp = Explainer.from_parts(model.conv, head, method="gradcam")
    x = random_input(2, 16)
    result = exp(x, [0, 1])
    with torch.no_grad():
        torch.testing.assert_close(result.logits, model(x))
    assert result.cams.shape == (2, 16, 16)


def test_module_called_twice_asks_for_a_node_name():
    with pytest.raises(LayerNotFoundError, match="_swish_1"):
        split_model(seeded_model("efficientnet-lite0"), "_swish")


def test_imports_run_one_way():
    """explainer (the eager library) <- export (graphs, runtimes) <- deploycam (CLI, bench)."""
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parent.parent
    allowed = {"explainer": {"explainer"}, "export": {"explainer", "export"}}
    wrong = []
    for package, may_import in allowed.items():
        for path in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
                for name in names:
                    top = name.split(".")[0]
                    if top in {"explainer", "export", "deploycam"} and top not in may_import:
                        wrong.append(f"{path.relative_to(root)} imports {name}")
    assert not wrong, wrong
