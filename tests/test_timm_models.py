"""explainer.split with timm models: timm's own untraceable modules become leaves automatically.

tf_efficientnet_b0 (``Conv2dSame``'s data-dependent ``pad_same``) and MobileViT (attention
blocks with shape-dependent code) failed to trace before; each is checked against a hook-based
float64 Grad-CAM here.
"""

from __future__ import annotations

import pytest
import torch

from explainer import Explainer
from explainer.layers import default_layer
from tests import reference

timm = pytest.importorskip("timm")

#: model -> input size (EfficientFormer's attention bias is built for 224).
MODELS = {"tf_efficientnet_b0": 128, "mobilevit_xxs": 128, "efficientformer_l1": 224, "convnext_atto": 128}


@pytest.mark.parametrize("name", MODELS)
def test_timm_model_traces_and_matches_the_float64_reference(name):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    size = MODELS[name]
    layer = default_layer(model, (1, 3, size, size))
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    targets = [1, 7]
    result = Explainer(model, layer, "gradcam")(x, targets)
    A, G, _ = reference.activations_and_gradients(model, layer, x, targets)
    expected = reference.gradcam(A, G)
    scale = max(float(abs(expected).max()), 1e-12)
    assert float(abs(result.raw.double().numpy() - expected).max()) <= 1e-4 * scale


def test_untraceable_module_is_named_in_the_error():
    from torch import nn

    from explainer import TraceError

    class Branchy(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.gate = Branchy()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.gate(self.conv(x)).mean(dim=(2, 3)))

    with pytest.raises(TraceError, match=r"inside 'gate': pass leaf_modules=\['gate'\]"):
        Explainer(Net().eval(), "conv")
    Explainer(Net().eval(), "conv", leaf_modules=["gate"])(torch.randn(1, 3, 8, 8))
