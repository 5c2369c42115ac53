"""A detector explanation against the detector's plain inference and against pytorch-grad-cam.

    pytest benchmarks/test_detection.py --benchmark-only -s

Faster R-CNN mobilenet_v3_large_320_fpn (seeded random weights: no pretrained download here; its score
threshold at 0 so boxes exist) on scikit-image's chelsea photo, batch 1. The same session times, in
alternating rounds (explainer.timing.paired_ms), the detector's plain inference (the floor) and each
explanation; ratios are to the floor, ``! busy`` marks a floor spread over 25%. pytorch-grad-cam's
EigenCAM (hooks on ``model.backbone`` with its ``fasterrcnn_reshape_transform``) is timed when the
bench extra is installed; it computes the same map as ``target_layer="concat"`` (tested to 1e-5).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch


def _detector() -> torch.nn.Module:
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, box_score_thresh=0.0).eval()


def test_detector_explanations(benchmark, tmp_path):
    import export
    from deploycam.bench.report import time_against_plain
    from explainer import DetectionTarget, Explainer
    from explainer.imaging import sample_images

    model = _detector()
    photo = torch.from_numpy(sample_images()["chelsea"]).permute(2, 0, 1).float().div(255)[None]  # (1, 3, 300, 451)
    with torch.no_grad():
        found = model(list(photo))[0]
    target = DetectionTarget(found["labels"][:1], found["boxes"][:1] + 1.0)

    def plain():
        with torch.no_grad():
            return model(list(photo))

    gradcam = Explainer.for_detector(model, "fpn", "gradcam")
    eigen_fpn = gradcam.with_method("eigencam")
    layercam = gradcam.with_method("layercam")
    eigen_concat = Explainer.for_detector(model, "concat", "eigencam")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice
        export.to_torchscript(gradcam, tmp_path / "det.pt", photo)
    scripted = export.load_detector(tmp_path / "det.pt")
    labels, boxes = target.labels[None], target.boxes.float()[None]
    cases = {
        "gradcam, fpn, 1 box": lambda: gradcam(photo, target),
        "gradcam, TorchScript": lambda: scripted(photo, labels, boxes),
        "eigencam, fpn": lambda: eigen_fpn(photo),
        "eigencam, concat": lambda: eigen_concat(photo),
        "gradcam, 5 boxes each": lambda: gradcam.explain_detections(photo, score_threshold=0.0, max_boxes=5),
        "gradcam, 10 boxes each": lambda: gradcam.explain_detections(photo, score_threshold=0.0, max_boxes=10),
        "layercam, 10 boxes each": lambda: layercam.explain_detections(photo, score_threshold=0.0, max_boxes=10),
    }
    try:
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget
        from pytorch_grad_cam.utils.reshape_transforms import fasterrcnn_reshape_transform

        peer = copy.deepcopy(model)
        peer_cam = pgc.EigenCAM(peer, target_layers=[peer.backbone], reshape_transform=fasterrcnn_reshape_transform)
        peer_target = [FasterRCNNBoxScoreTarget(labels=found["labels"][:1].tolist(),
                                                bounding_boxes=found["boxes"][:1].numpy())]
        cases["pytorch-grad-cam EigenCAM"] = lambda: peer_cam(photo, targets=peer_target)
    except ImportError:
        pass
    rows = time_against_plain(benchmark, "detector fasterrcnn_mobilenet_v3_large_320_fpn",
                              "Faster R-CNN mobilenet_v3_large_320_fpn, chelsea 300x451, batch 1, "
                              f"{torch.get_num_threads()} threads; " "plain inference {floor:.1f} ms (alone):",
                              plain, cases, lambda: gradcam(photo, target))
    if "pytorch-grad-cam EigenCAM" not in rows:
        pytest.skip("pytorch-grad-cam (bench extra) not installed: its row was not measured")
