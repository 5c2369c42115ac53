"""explainer.models: the bundled EfficientNet-Lite0 with real ImageNet weights on the bundled photos."""

from __future__ import annotations

import numpy as np
import torch

from explainer import Explainer
from explainer.imaging import Preprocess
from explainer.labels import imagenet_labels, label_of

CAT, ESPRESSO = 285, 967


def test_labels_are_bundled():
    labels = imagenet_labels()
    assert len(labels) == 1000 and labels[CAT] == "Egyptian cat" and label_of(ESPRESSO) == "espresso"


def test_photos_are_classified(lite0, photo_batch):
    with torch.no_grad():
        top = lite0(photo_batch).argmax(1).tolist()
    assert top == [CAT, ESPRESSO]


def test_whole_photo_classification_is_confident(lite0, photos):
    pre = Preprocess(resize="squash")
    x = torch.stack([pre(photos["chelsea"])[0]])
    with torch.no_grad():
        p = lite0(x).softmax(1)[0]
    assert int(p.argmax()) == CAT and float(p[CAT]) > 0.6


def test_gradcam_discriminates_classes_side_by_side(lite0, photos):
    """Cat photo left, coffee photo right: each class's map peaks on its own half."""
    pre = Preprocess()
    pair = np.concatenate([pre.view(photos["chelsea"]), pre.view(photos["coffee"])], axis=1)
    x = pre.to_tensor(pair).unsqueeze(0)
    result = Explainer(lite0, "_conv_head", "gradcam")(x, [[CAT, ESPRESSO]])
    half = x.shape[-1] // 2
    cat_map, coffee_map = result.cams[0]
    assert int(cat_map.flatten().argmax()) % x.shape[-1] < half
    assert int(coffee_map.flatten().argmax()) % x.shape[-1] >= half
    assert cat_map[:, :half].mean() > 3 * cat_map[:, half:].mean()
    assert coffee_map[:, half:].mean() > 3 * coffee_map[:, :half].mean()


def test_batch_of_photos_explains_each_top_class(lite0, photo_batch):
    result = Explainer(lite0, "_conv_head", "layercam")(photo_batch)
    assert result.targets.tolist() == [CAT, ESPRESSO]
    assert result.cams.shape == (2, 224, 224)
