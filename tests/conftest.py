"""pytest fixtures shared by the tests (the helpers they use live in tests/helpers.py)."""

from __future__ import annotations

import pytest
import torch

from explainer.imaging import Preprocess, sample_images
from tests.helpers import seeded_model


@pytest.fixture(scope="session")
def lite0() -> torch.nn.Module:
    return seeded_model("efficientnet-lite0")


@pytest.fixture(scope="session")
def resnet18() -> torch.nn.Module:
    return seeded_model("resnet18")


@pytest.fixture(scope="session")
def photos() -> dict:
    return sample_images()


@pytest.fixture(scope="session")
def photo_batch(photos) -> torch.Tensor:
    """chelsea and coffee, preprocessed: (2, 3, 224, 224)."""
    pre = Preprocess()
    return torch.stack([pre(photos["chelsea"])[0], pre(photos["coffee"])[0]])
