"""TorchScript export of detector explanations: the saved graph against the eager explainer on fresh images
(given reference boxes and each image's top detection, called repeatedly), and its errors."""

from __future__ import annotations

import pytest
import torch

import export
from explainer import DetectionTarget, Explainer, InputError
from explainer.errors import ExportError, GradModeError
from tests.detectors import DETECTORS, SLOW, detector, images, target_of

CASES = [(name, "gradcam") for name in DETECTORS] + [("fasterrcnn_mobilenet_v3_large_fpn", "eigencam"),
                                                    ("retinanet_resnet50_fpn", "layercam")]
CASES += [pytest.param(name, "gradcam", marks=pytest.mark.slow) for name in SLOW]


def layer_of(name: str) -> str:
    return "backbone" if name.startswith("ssd") else "fpn"


@pytest.mark.parametrize(("name", "method"), CASES)
def test_saved_graph_equals_eager(name, method, tmp_path):
    model = detector(name)
    exp = Explainer.for_detector(model, layer_of(name), method)
    info = export.to_torchscript(exp, tmp_path / "det.pt", images(1, seed=5))
    assert info.method == method and info.detector == type(model).__name__ and info.layers
    rt = export.load_detector(tmp_path / "det.pt")
    x = images(2, seed=1)  # fresh images, another batch size than the example
    targets = [target_of(model, x, i) for i in range(2)]
    labels = torch.stack([t.labels for t in targets])
    boxes = torch.stack([t.boxes.float() for t in targets])
    given = exp(x, targets)
    top = exp(x)
    for _ in range(3):  # TorchScript profiles the first call and runs an optimised plan from the second on
        detections, cams = rt(x, labels, boxes)
        assert cams.shape == (2, 160, 224) and not cams.requires_grad
        assert (cams - given.cams).abs().max() <= 1e-4
        for ours, theirs in zip(detections, given.detections):
            assert torch.equal(ours["labels"], theirs["labels"])
            assert torch.allclose(ours["boxes"], theirs["boxes"], atol=1e-4)
        _, cams = rt(x)  # each image's top detection, explained with its own box
        assert (cams - top.cams).abs().max() <= 1e-4


def test_several_reference_boxes_padded_with_label_minus_one(tmp_path):
    name = "fasterrcnn_mobilenet_v3_large_fpn"
    model = detector(name)
    exp = Explainer.for_detector(model, "fpn", "gradcam")
    export.to_torchscript(exp, tmp_path / "det.pt", images(1))
    x = images(2, seed=3)
    with torch.no_grad():
        found = model(list(x))
    two = DetectionTarget(found[0]["labels"][:2], found[0]["boxes"][:2] + 1.0)  # two boxes for image 0
    one = DetectionTarget(found[1]["labels"][:1], found[1]["boxes"][:1] + 1.0)  # one for image 1
    expected = exp(x, [two, one]).cams
    labels = torch.stack([found[0]["labels"][:2], torch.cat([found[1]["labels"][:1], torch.tensor([-1])])])
    boxes = torch.stack([found[0]["boxes"][:2] + 1.0, torch.cat([found[1]["boxes"][:1] + 1.0, torch.zeros(1, 4)])])
    _, cams = export.load_detector(tmp_path / "det.pt")(x, labels, boxes)
    assert (cams - expected).abs().max() <= 1e-4


def test_detector_files_and_calls_get_specific_errors(tmp_path):
    model = detector("fasterrcnn_mobilenet_v3_large_fpn")
    exp = Explainer.for_detector(model, "fpn", "gradcam")
    with pytest.raises(ExportError, match="part='full'"):
        export.to_torchscript(exp, tmp_path / "head.pt", images(1), part="head")
    export.to_torchscript(exp, tmp_path / "det.pt", images(1))
    with pytest.raises(ExportError, match="load_detector"):
        export.load(tmp_path / "det.pt")
    rt = export.load_detector(tmp_path / "det.pt")
    x = images(2)
    with pytest.raises(InputError, match="both labels"):
        rt(x, labels=torch.zeros(2, 1, dtype=torch.int64))
    with pytest.raises(InputError, match=r"\(N, B, 4\)"):
        rt(x, torch.zeros(2, 1, dtype=torch.int64), torch.zeros(2, 4))
    with pytest.raises(InputError):
        rt(x[:, :1])  # one channel
    with torch.no_grad():  # the runtime turns grad on for the graph, as export.load's does
        assert (rt(x)[1] - rt(x)[1]).abs().max() == 0
    with torch.inference_mode(), pytest.raises(GradModeError):
        rt(x)
    classifier = Explainer(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
                                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                               torch.nn.Linear(4, 2)).eval(), "0")
    export.to_torchscript(classifier, tmp_path / "cls.pt", torch.rand(1, 3, 16, 16))
    with pytest.raises(ExportError, match="not a detector"):
        export.load_detector(tmp_path / "cls.pt")
