"""A YOLO detector's explanations against its plain inference (and pytorch-grad-cam's EigenCAM).

    pytest benchmarks/test_yolo.py --benchmark-only -s

Ultralytics YOLOv8n (seeded random weights from its yaml, made decisive as tests/yolo_models.py does: no
weights download here) on scikit-image's chelsea photo letterboxed to 640x640, batch 1. Plain inference is
what a deployed detector runs: backbone, neck, Detect head and NMS (deploycam's, ultralytics' defaults),
without grad. Each case and the floor run in alternating rounds (explainer.timing.paired_ms); ratios are
to the floor, ``! busy`` marks a floor spread over 25%. "10 boxes" is ``explain_detections(max_boxes=10)``:
ten maps from the few head backwards explainer.detection.anchor_split needs, not ten. Skips without
ultralytics (the yolo extra).
"""

from __future__ import annotations

import copy

import pytest
import torch


def test_yolo_explanations(benchmark):
    pytest.importorskip("ultralytics", reason="the yolo extra (ultralytics) is not installed")
    from deploycam.bench.report import time_against_plain
    from explainer import DetectionTarget, Explainer
    from explainer.detection.yolo import letterbox
    from explainer.imaging import sample_images
    from tests.yolo_models import yolo

    model = yolo("yolov8n")
    x = letterbox(sample_images()["chelsea"])[0][None]  # (1, 3, 640, 640)
    exp = Explainer.for_detector(model, method="gradcam")
    parts = exp.parts

    def plain():
        with torch.no_grad():
            prepared = parts.prepare(x)
            return parts.detect(prepared, prepared.maps)

    found = plain()[0]
    target = DetectionTarget([int(found["labels"][0])], found["boxes"][:1].tolist(), same_label=True)
    cases = {
        "gradcam, 1 box": lambda: exp(x, target),
        "gradcam, 10 boxes each": lambda: exp.explain_detections(x, score_threshold=0.0, max_boxes=10),
        "layercam, 10 boxes each": lambda: exp.with_method("layercam").explain_detections(x, 0.0, 10),
        "eigencam, P3-P5": lambda: exp.with_method("eigencam")(x),
    }
    try:
        import pytorch_grad_cam as pgc

        peer = copy.deepcopy(model)
        peer_cam = pgc.EigenCAM(peer, target_layers=[peer.model[i] for i in peer.model[-1].f])
        cases["pytorch-grad-cam EigenCAM"] = lambda: peer_cam(x, targets=[lambda output: output.sum()])
    except ImportError:
        pass
    time_against_plain(benchmark, "detector yolov8n",
                       f"YOLOv8n, chelsea letterboxed to 640x640, batch 1, {torch.get_num_threads()} threads; plain "
                       "inference {floor:.1f} ms (alone; backbone, head and NMS):", plain, cases, lambda: exp(x, target))


def test_yolo_onnx_explanation_graphs(benchmark, tmp_path):
    """The exported explanation (export.detector_onnx, targets="detections") in ONNX Runtime against the plain
    detector exported by ultralytics and run in ONNX Runtime (its decoded output, no NMS): the graph holds
    NMS (K unrolled steps) and the K maps (the head re-run on crops around each box's anchor)."""
    pytest.importorskip("ultralytics", reason="the yolo extra (ultralytics) is not installed")
    import onnxruntime as ort

    import export
    from deploycam.bench.report import time_against_plain
    from explainer import Explainer
    from explainer.detection.yolo import letterbox
    from explainer.imaging import sample_images
    from export.runtime import session_options
    from tests.yolo_models import ultralytics_onnx, yolo

    model = yolo("yolov8n")
    x = letterbox(sample_images()["chelsea"])[0][None]  # (1, 3, 640, 640)
    plain_file = ultralytics_onnx("yolov8n", tmp_path, 640)
    session = ort.InferenceSession(plain_file, session_options(spin=False), providers=["CPUExecutionProvider"])
    feed = {"images": x.numpy()}
    exp = Explainer.for_detector(model, method="gradcam")
    cases = {}
    for k in (1, 10):
        path = tmp_path / f"explain_{k}.onnx"
        export.to_onnx(exp, path, x, max_boxes=k, score_threshold=0.0)
        rt = export.load(path, spin=False)
        cases[f"gradcam graph, {k} box{'es' if k > 1 else ''} (ONNX Runtime)"] = lambda rt=rt: rt(x)

    def plain():
        return session.run(None, feed)

    def eager_plain():
        with torch.no_grad():
            prepared = exp.parts.prepare(x)
            return exp.parts.detect(prepared, prepared.maps)

    cases["plain eager PyTorch inference (for scale)"] = eager_plain
    time_against_plain(benchmark, "detector yolov8n onnx",
                       f"YOLOv8n ONNX, chelsea letterboxed to 640x640, batch 1, {torch.get_num_threads()} threads; plain "
                       "ONNX Runtime inference {floor:.1f} ms (alone; ultralytics' export, no NMS):", plain, cases,
                       next(iter(cases.values())))
