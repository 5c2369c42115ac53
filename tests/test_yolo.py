"""Ultralytics YOLO (v8, 11) explained without hooks: against a float64 run of the whole detector with forward
hooks on the head's inputs (hooks only here, in the test), per-box maps against single targets, every method,
letterbox and boxes mapped back, the model untouched, clear errors. Skips without the yolo extra."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torchvision.ops import batched_nms

from explainer import DetectionTarget, Explainer, InputError, LayerNotFoundError, ModelOutputError
from explainer.detection.yolo import CONFIDENCE, MAX_DETECTIONS, NMS_IOU, letterbox
from explainer.methods import exportable_methods
from tests import reference
from tests.test_detection import aggregate, leaf_hook, restated_score
from tests.yolo_models import YOLOS, float64_yolo, yolo, yolo_images

pytest.importorskip("ultralytics", reason="the yolo extra (ultralytics) is not installed")

GRADIENT_METHODS = [m for m in exportable_methods() if m != "eigencam"]


def hooked_reference(model, x, target: DetectionTarget):
    """A (1, C, h, w) and G = d score / dA for each input of the Detect head, from a float64 copy of the whole
    detector (ultralytics' own forward) with forward hooks making those inputs leaves; the detections
    restated plainly: ultralytics' decoded output, confidence >= 0.25, class-aware NMS at IoU 0.7, 300 kept."""
    m = copy.deepcopy(model).double().eval()
    head = m.model[-1]
    leaves: dict = {}
    for i in head.f:
        m.model[i].register_forward_hook(leaf_hook(leaves, i))
    y = m(x.double())[0][0]  # (4 + classes, anchors)
    scores, labels = y[4:].max(0)
    keep_ = scores.detach() >= CONFIDENCE
    cx, cy, w, h = y[:4, keep_]
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    chosen = batched_nms(boxes.detach(), scores[keep_].detach(), labels[keep_], NMS_IOU)[:MAX_DETECTIONS]
    found = [{"boxes": boxes[chosen], "scores": scores[keep_][chosen], "labels": labels[keep_][chosen]}]
    score = restated_score(found, target)
    grads = torch.autograd.grad(score, [leaves[i] for i in head.f])
    return [leaves[i].detach().numpy() for i in head.f], [g.numpy() for g in grads], found[0]


def offset_target(found: dict, index: int = 0) -> DetectionTarget:
    """Detection ``index`` as a target, its box shrunk by 2 px a side (off the IoU == 1 kink, as tests.detectors)."""
    box = found["boxes"][index].detach()
    inset = torch.clamp((box[2:] - box[:2]) / 4, max=2.0)
    box = torch.cat([box[:2] + inset, box[2:] - inset])
    return DetectionTarget([int(found["labels"][index])], box[None].tolist(), same_label=True)


@pytest.mark.parametrize("method", ["gradcam", "layercam", "hirescam"])
@pytest.mark.parametrize("name", [*YOLOS, "yolov5n", "yolov3-tiny"])  # v5 / v3: ultralytics' anchor-free heads
def test_gradient_maps_match_a_float64_hooked_run_of_the_whole_detector(name, method):
    model = yolo(name)
    x = yolo_images(1, size=(128, 160))
    exp64 = Explainer.for_detector(float64_yolo(name), method=method)
    target = offset_target(exp64.parts.detect(exp64.parts.prepare(x.double()), exp64.parts.prepare(x.double()).maps)[0])
    A, G, found = hooked_reference(model, x, target)
    result = exp64(x.double(), target)
    assert result.layers == [f"model.{i}" for i in model.model[-1].f] and len(result.level_maps) == len(A)
    torch.testing.assert_close(result.detections[0]["boxes"], found["boxes"].detach(), rtol=0, atol=1e-9)
    expected_levels = [reference.FORMULAS[method](a, g) for a, g in zip(A, G)]
    scale = max(max(np.abs(e).max() for e in expected_levels), 1e-12)
    for level, (expected, raw) in enumerate(zip(expected_levels, result.level_maps)):
        assert raw.shape == (1, 1, *expected.shape[1:])
        assert np.abs(raw[:, 0].numpy() - expected).max() <= 1e-8 * scale, f"level {level}"
    expected_cam = aggregate([e[0] for e in expected_levels], 128, 160)
    assert np.abs(result.cams[0].numpy() - expected_cam).max() <= 1e-6
    in_float32 = Explainer.for_detector(model, method=method)(x, target).cams[0].double().numpy()
    assert np.corrcoef(in_float32.ravel(), expected_cam.ravel())[0, 1] >= 0.99


@pytest.mark.parametrize("name", YOLOS)
def test_every_method_explains_a_batch(name):
    model = yolo(name)
    x = yolo_images(2, seed=1, size=(128, 160))
    exp = Explainer.for_detector(model)
    for method in exportable_methods():
        result = exp.with_method(method)(x)  # each image's top detection (eigencam: none needed)
        assert result.cams.shape == (2, 128, 160) and torch.isfinite(result.cams).all(), method
        assert float(result.cams.max()) > 0.5, method
        assert all(set(d) >= {"boxes", "scores", "labels", "anchors"} for d in result.detections)


def test_k_boxes_per_image_equal_single_targets_in_float64():
    """explain_detections' K maps (one batched backward) are the K single-target maps."""
    exp = Explainer.for_detector(float64_yolo("yolov8n"), method="gradcam")
    x = yolo_images(2, seed=2).double()
    per_box = exp.explain_detections(x, score_threshold=0.3, max_boxes=3)
    assert [len(p) for p in per_box] == [3, 3]
    assert all(a.score >= b.score for p in per_box for a, b in zip(p, p[1:]))
    for i, boxes in enumerate(per_box):
        for d in boxes:
            alone = exp(x[i:i + 1], DetectionTarget([d.label], d.box[None].tolist(), same_label=True)).cams[0]
            assert (d.cam - alone).abs().max() <= 1e-9


@pytest.mark.parametrize("method", ["ablationcam", "reciprocam"])
def test_perturbation_methods_run_on_the_head_only(method):
    model = yolo("yolov8n")
    x = yolo_images(1, seed=4, size=(64, 96))  # P5 is 2x3: few positions and copies
    exp = Explainer.for_detector(copy.deepcopy(model).double(), ["model.21"], method, batch_size=16, progress=False)
    found = exp.parts.detect(exp.parts.prepare(x.double()), exp.parts.prepare(x.double()).maps)[0]
    result = exp(x.double(), offset_target(found))
    assert result.cams.shape == (1, 64, 96) and torch.isfinite(result.cams).all() and result.layers == ["model.21"]


def test_letterbox_and_boxes_back_on_the_picture():
    from skimage import data

    picture = data.chelsea()  # (300, 451, 3)
    x, box = letterbox(picture)
    assert x.shape == (3, 640, 640) and box.size == (300, 451)
    assert box.pad == (0, 107) and abs(box.gain - 640 / 451) < 1e-9
    assert torch.allclose(x[:, 0, 0], torch.full((3,), 114 / 255))  # grey padding on top
    inner = box.boxes_to_original(torch.tensor([[0.0, 107.0, 640.0, 533.0]]))
    assert torch.allclose(inner, torch.tensor([[0.0, 0.0, 451.0, 300.0]]), atol=0.5)
    cam = torch.zeros(640, 640)
    cam[107:533, :320] = 1.0  # the picture's left half
    back = box.map_to_original(cam)
    assert back.shape == (300, 451) and back[:, :200].min() > 0.99 and back[:, 240:].max() < 0.01
    x_auto, _ = letterbox(picture, auto=True)
    assert x_auto.shape == (3, 448, 640)  # 426 rows padded only to the next multiple of 32
    with pytest.raises(InputError, match="RGB"):
        letterbox(picture.astype(np.float32))


def test_the_model_is_left_untouched_and_another_size_works():
    model = yolo("yolov8n")
    head = model.model[-1]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cached = (getattr(head, "shape", None), getattr(head, "anchors", None))
    exp = Explainer.for_detector(model)
    exp(yolo_images(1, size=(320, 320)))
    exp(yolo_images(1, size=(256, 320)))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert (getattr(head, "shape", None), getattr(head, "anchors", None)) == cached  # the copy cached them
    assert all(p.grad is None for p in model.parameters()) and not model.training


def test_ultralytics_objects_and_bad_input():
    import ultralytics

    wrapper = ultralytics.YOLO("yolov8n.yaml")
    assert Explainer.for_detector(wrapper).model is wrapper.model  # the YOLO object is unwrapped
    exp = Explainer.for_detector(yolo("yolov8n"))
    with pytest.raises(InputError, match="multiples of the model's stride 32; got 250x320.*letterbox"):
        exp(torch.rand(1, 3, 250, 320))
    with pytest.raises(LayerNotFoundError, match="model.15, model.18, model.21"):
        Explainer.for_detector(yolo("yolov8n"), ["model.9"])
    with pytest.raises(ModelOutputError, match="ultralytics YOLO DetectionModel"):
        Explainer.for_detector(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)))
    assert exp.explain_detections(yolo_images(1), score_threshold=1.0) == [[]]


def test_a_yolo_explanation_has_no_torchscript_graph(tmp_path):
    import export
    from explainer.errors import ExportError

    exp = Explainer.for_detector(yolo("yolov8n"))
    x = yolo_images(1, size=(64, 64))
    with pytest.raises(ExportError, match="no TorchScript graph for DetectionModel"):
        export.to_torchscript(exp, tmp_path / "d.pt", x)  # YOLO explanations export to ONNX (tests/test_yolo_export.py)


@pytest.mark.parametrize("name", YOLOS)
def test_eigencam_agrees_with_pytorch_grad_cam_on_the_head_inputs(name, monkeypatch):
    """pytorch-grad-cam's EigenCAM with hooks on the three layers feeding the Detect head (its multi-layer
    rule: per layer the first principal component, ReLU, min-max, resize; mean; min-max). Its singular
    vector's sign is whatever LAPACK returns (yolo11n's maps come out inverted on this machine); deploycam
    picks the sign that correlates with the channel mean, so the peer's projection gets that sign here."""
    pgc = pytest.importorskip("pytorch_grad_cam", reason="the bench extra (pytorch-grad-cam) is not installed")
    import pytorch_grad_cam.eigen_cam as peer_module

    original = peer_module.get_2d_projection

    def oriented(activations):
        projections = original(activations)  # (N, h, w)
        mean = activations.mean(axis=1)  # (N, h, w): the channel mean
        for p, m in zip(projections, mean):
            if ((p - p.mean()) * (m - m.mean())).sum() < 0:
                p *= -1
        return projections

    monkeypatch.setattr(peer_module, "get_2d_projection", oriented)
    model = yolo(name)
    x = yolo_images(1, seed=5, size=(128, 160))
    ours = Explainer.for_detector(model, method="eigencam")(x).cams[0].numpy()
    peer = copy.deepcopy(model)
    with pgc.EigenCAM(peer, target_layers=[peer.model[i] for i in peer.model[-1].f]) as cam:
        theirs = cam(x, targets=[lambda output: output.sum()])[0]  # EigenCAM ignores it; a target must be given
    assert np.abs(ours - theirs).max() <= 1e-4  # measured 2.4e-7 on yolov8n (it resizes with OpenCV)


@pytest.mark.parametrize("name", YOLOS)
def test_k_targets_split_from_few_backwards_equal_one_backward_each(name):
    """anchor_split: each target's gradient masked out of a shared whole-head backward (split_gradients), and
    recomputed from crops around the anchors it reads (crop_gradients, the default), equal its own backward
    through the whole head (float64), with targets whose windows overlap (neighbouring anchors: separate
    rounds), near the maps' borders, targets of two reference boxes (two anchors), and one that matches nothing."""
    from explainer.detection.anchor_split import _cells
    from explainer.detection.explainer import _level_gradients

    exp = Explainer.for_detector(float64_yolo(name))
    parts = exp.parts
    assert parts.radius == 2
    x = yolo_images(2, seed=7, size=(128, 160)).double()
    prepared = parts.prepare(x)
    found = parts.detect(prepared, prepared.maps)
    sizes = [tuple(m.shape[-2:]) for m in prepared.maps]
    per_image = []
    for d in found:
        targets = [DetectionTarget([int(d["labels"][j])], d["boxes"][j:j + 1].tolist(), same_label=True)
                   for j in range(12)]
        targets.append(DetectionTarget(d["labels"][12:14].tolist(), d["boxes"][12:14].tolist(), same_label=True))
        targets.append(DetectionTarget([1], [[0.0, 0.0, 1.0, 1.0]]))  # matches nothing
        per_image.append(targets)
    cells = _cells(found[0]["anchors"][:12], sizes)
    assert any(a[0] == b[0] and abs(a[1] - b[1]) <= 4 and abs(a[2] - b[2]) <= 4
               for i, a in enumerate(cells) for b in cells[i + 1:]), "no overlapping windows: pick other boxes"

    def forward():  # a fresh graph: leaves, decoded output, scores (N, K)
        leaves = [m.detach().requires_grad_(True) for m in prepared.maps]
        detections, decoded = parts.detect_decoded(prepared, [leaf.clone() for leaf in leaves])
        scores = torch.stack([torch.stack([t(d) for t in ts]) for d, ts in zip(detections, per_image)])
        return leaves, decoded, scores

    def from_crops():  # the eager explainer's default: the head without grad, gradients from crops
        with torch.no_grad():
            decoded = parts.decoded(prepared.maps)
            kept = [d["anchors"] for d in parts.from_decoded(decoded)]
        candidates = [(row[:, a].detach().requires_grad_(True), a) for row, a in zip(decoded, kept)]
        detections = parts.from_candidates(candidates, suppress=False)
        scores = torch.stack([torch.stack([t(d) for t in ts]) for d, ts in zip(detections, per_image)])
        return parts.level_gradients(scores, candidates, [], [0, 1, 2], prepared)

    leaves, decoded, scores = forward()
    parts.crops = False  # the whole-head split (ONNX files' route), on this explainer's parts only
    split = parts.level_gradients(scores, decoded, leaves, [0, 1, 2], prepared)
    parts.crops = True
    crops = from_crops()
    for j in range(scores.shape[1]):
        leaves, _, scores = forward()
        alone = _level_gradients(scores[:, j:j + 1], leaves)  # one backward for target j: (N, 1, C, h, w)
        for level, (g, c) in enumerate(zip(split, crops)):
            torch.testing.assert_close(g[:, j], alone[level][:, 0], rtol=0, atol=1e-12)
            torch.testing.assert_close(c[:, j], alone[level][:, 0], rtol=0, atol=1e-12)
    assert float(split[0][:, -1].abs().max()) == 0.0 and float(crops[0][:, -1].abs().max()) == 0.0  # unmatched


def test_receptive_radius_is_the_support_of_one_anchors_gradient():
    from torch import nn

    from explainer.detection.anchor_split import receptive_radius

    parts = Explainer.for_detector(float64_yolo("yolov8n")).parts
    x = yolo_images(1, seed=8, size=(128, 160)).double()
    prepared = parts.prepare(x)
    leaf = prepared.maps[0].detach().requires_grad_(True)
    y = parts.decoded([leaf, *prepared.maps[1:]])
    anchor = 5 * 20 + 7  # P3 (16 x 20): row 5, column 7
    (g,) = torch.autograd.grad(y[0, :, anchor].sum(), leaf)
    rows, cols = torch.nonzero(g[0].abs().sum(0), as_tuple=True)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (3, 7, 5, 9)  # radius 2 around (5, 7)
    assert receptive_radius([nn.Sequential(nn.Conv2d(2, 2, 3, padding=2, dilation=2), nn.Conv2d(2, 2, 5, padding=2))]) == 4
    assert receptive_radius([nn.Sequential(nn.Conv2d(2, 2, 3), nn.MaxPool2d(2))]) is None
    assert receptive_radius([nn.Conv2d(2, 2, 3, stride=2)]) is None


def test_cli_explains_a_picture_with_a_yolo_checkpoint(tmp_path, capsys):
    """deploycam explain PHOTO --model yolov8n --weights ckpt.pt: letterboxed in, boxes and maps drawn on the
    photo at its own size (an ultralytics-style checkpoint of the decisive test model)."""
    import cv2

    from deploycam.cli import main
    from explainer.imaging import load_image

    torch.save({"model": yolo("yolov8n")}, tmp_path / "ckpt.pt")
    photo = tmp_path / "cat photo.jpg"
    from skimage import data

    cv2.imwrite(str(photo), data.chelsea()[:, :, ::-1])
    out = tmp_path / "out"
    argv = ["explain", str(photo), "--model", "yolov8n", "--weights", str(tmp_path / "ckpt.pt"), "--method", "layercam",
            "--topk", "2", "--score-threshold", "0.3", "--out", str(out)]
    assert main(argv) == 0
    written = sorted(p.name for p in out.glob("*.png"))
    assert len(written) == 3 and "cat photo_grid_layercam.png" in written
    assert load_image(out / written[0]).shape == (300, 451, 3)
    assert "layercam at model.15, model.18, model.21 of yolov8n" in capsys.readouterr().out
    assert main(["explain", str(photo), "--model", "yolov8q", "--out", str(out)]) == 2
    assert "unknown model 'yolov8q'" in capsys.readouterr().err
