"""A YOLO detector's explanation exported to ONNX (export.detector_onnx) and run by ONNX Runtime, OpenVINO and
OpenCV's DNN: the eager explainer's detections and maps on fresh images (another batch size than the export's),
both target modes, padding, clear errors. Each export traces for ~50 s: one file per mode, shared (slow-marked)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import export
from explainer import Explainer, InputError
from explainer.errors import ExportError
from tests.yolo_models import ultralytics_onnx, yolo, yolo_images

pytest.importorskip("ultralytics", reason="the yolo extra (ultralytics) is not installed")
#: every test here but the error checks exports (about a minute of tracing each): slow-marked, run in CI
slow = pytest.mark.slow

SIZE = (128, 160)
K = 4
THRESHOLD = 0.3
#: max |cam - eager| (maps in [0, 1]); measured 1.2e-5 (ONNX Runtime), 1.5e-5 (OpenVINO), 1.9e-5 (OpenCV)
MAP_TOLERANCE = 1e-4


def runtimes() -> list:
    import cv2

    from export.opencv_dnn import new_engine

    found = ["onnxruntime"]
    try:
        import openvino  # noqa: F401

        found.append("openvino")
    except ImportError:
        pass
    try:
        new_engine(cv2)
        found.append("opencv")
    except ExportError:
        pass
    return found


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("yolo_export")
    exp = Explainer.for_detector(yolo("yolov8n"))
    example = yolo_images(1, seed=9, size=SIZE)
    files = {}
    for targets in ("detections", "boxes"):
        path = folder / f"{targets}.onnx"
        info = export.to_onnx(exp, path, example, targets=targets, max_boxes=K, score_threshold=THRESHOLD)
        assert info.targets == targets and info.image_size == SIZE and info.method == "gradcam"
        files[targets] = str(path)
    return exp, files


def eager_boxes(found: list, k: int) -> tuple[np.ndarray, np.ndarray]:
    boxes, labels = np.zeros((len(found), k, 4), np.float32), np.full((len(found), k), -1, np.int64)
    for i, detections in enumerate(found):
        for j, d in enumerate(detections[:k]):
            boxes[i, j], labels[i, j] = d.box.numpy(), d.label
    return boxes, labels


@slow
@pytest.mark.parametrize("runtime", runtimes())
def test_the_detections_graph_explains_what_the_eager_explainer_does(graphs, runtime):
    exp, files = graphs
    x = yolo_images(3, seed=4, size=SIZE)
    eager = exp.explain_detections(x, score_threshold=THRESHOLD, max_boxes=K)
    rt = export.load(files["detections"], runtime=runtime)
    assert rt.backend.startswith(runtime)
    found = rt.explain_detections(x)
    assert [len(d) for d in found] == [len(d) for d in eager] and sum(len(d) for d in eager) >= 6
    for image_eager, image_graph in zip(eager, found):
        for a, b in zip(image_eager, image_graph):
            assert a.label == b.label and abs(a.score - b.score) < 1e-4
            torch.testing.assert_close(b.box, a.box, atol=1e-3, rtol=0)
            assert float(a.cam.max()) > 0
            assert float((a.cam - b.cam).abs().max()) <= MAP_TOLERANCE


@slow
@pytest.mark.parametrize("runtime", runtimes())
def test_the_boxes_graph_explains_given_boxes_for_any_k(graphs, runtime):
    exp, files = graphs
    x = yolo_images(2, seed=6, size=SIZE)
    eager = exp.explain_detections(x, score_threshold=THRESHOLD, max_boxes=3)
    rt = export.load(files["boxes"], runtime=runtime)
    for k in (1, 5):  # another K than the export's; 5 pads with label -1
        boxes, labels = eager_boxes(eager, k)
        out = rt(x, boxes, labels)
        assert out["cams"].shape == (2, k, *SIZE)
        for i, detections in enumerate(eager):
            for j in range(k):
                if j < len(detections):
                    assert int(out["labels"][i, j]) == detections[j].label
                    assert float((out["cams"][i, j] - detections[j].cam).abs().max()) <= MAP_TOLERANCE
                else:  # padding: matched nothing, an all-zero map
                    assert int(out["labels"][i, j]) == -1 and float(out["cams"][i, j].abs().max()) == 0.0


@slow
def test_runtime_input_errors(graphs):
    _, files = graphs
    detections, boxes = export.load(files["detections"]), export.load(files["boxes"])
    x = yolo_images(1, size=SIZE)
    with pytest.raises(InputError, match=r"\(N, 3, 128, 160\)"):
        detections(yolo_images(1, size=(160, 160)))
    with pytest.raises(InputError, match="float32"):
        detections(x.double())
    with pytest.raises(InputError, match="takes no boxes"):
        detections(x, np.zeros((1, 1, 4), np.float32), np.zeros((1, 1), np.int64))
    with pytest.raises(InputError, match="pass ref_boxes"):
        boxes(x)
    with pytest.raises(InputError, match=r"ref_boxes must be \(N, K, 4\)"):
        boxes(x, np.zeros((1, 4), np.float32), np.zeros((1,), np.int64))
    with pytest.raises(InputError, match="call it with ref_boxes"):
        boxes.explain_detections(x)
    assert "targets='boxes'" in repr(boxes)


def test_export_errors(tmp_path):
    x = yolo_images(1, size=SIZE)
    exp = Explainer.for_detector(yolo("yolov8n"))
    with pytest.raises(ExportError, match="targets must be one of detections, boxes"):
        export.to_onnx(exp, tmp_path / "a.onnx", x, targets="anchors")
    with pytest.raises(ExportError, match="max_boxes must be an int from 1 to 100"):
        export.to_onnx(exp, tmp_path / "a.onnx", x, max_boxes=0)
    with pytest.raises(ExportError, match="ablationcam has no ONNX detector graph"):
        export.to_onnx(exp.with_method("ablationcam"), tmp_path / "a.onnx", x)
    with pytest.raises(ExportError, match="part='full'"):
        export.to_onnx(exp, tmp_path / "a.onnx", x, part="head")
    with pytest.raises(ExportError, match="score_threshold must be in"):
        export.to_onnx(exp, tmp_path / "a.onnx", x, score_threshold=2.0)
    assert not (tmp_path / "a.onnx").exists()


@pytest.mark.parametrize("targets", ["detections", "boxes"])
def test_a_yolo_onnx_files_explanation_exports_at_fixed_shapes(tmp_path, targets):
    """The graph of a YOLO given as an ONNX file (ultralytics' dynamic export: reshapes from Shape) is traced at
    the example's batch; other batches run in chunks of it, fewer boxes are padded; ORT and OpenCV equal eager."""
    written = ultralytics_onnx("yolov8n", tmp_path, SIZE)
    exp = Explainer.for_detector(written)
    info = export.to_onnx(exp, tmp_path / "e.onnx", yolo_images(2, size=SIZE), max_boxes=3, targets=targets,
                          score_threshold=THRESHOLD)
    assert info.batch == 2 and info.boxes == (3 if targets == "boxes" else None)
    x = yolo_images(3, seed=5, size=SIZE)  # a batch of 3: a full chunk and a padded one
    eager = exp.explain_detections(x, score_threshold=THRESHOLD, max_boxes=3)
    assert sum(len(d) for d in eager) > 0
    for runtime in ["onnxruntime", "opencv"]:
        graph = export.load(tmp_path / "e.onnx", runtime=runtime)
        if targets == "detections":
            found = graph.explain_detections(x)
            assert [len(d) for d in found] == [len(d) for d in eager]
            pairs = list(zip(sum(eager, []), sum(found, [])))
            for a, b in pairs:
                assert a.label == b.label
                torch.testing.assert_close(a.box, b.box, atol=2e-3, rtol=2e-5)
                assert float((a.cam - b.cam).abs().max()) <= 1e-4
        else:
            boxes = torch.stack([torch.stack([d.box for d in image[:2]]) for image in eager])  # K=2 < the file's 3
            labels = torch.tensor([[d.label for d in image[:2]] for image in eager])
            out = graph(x, boxes, labels)
            assert out["cams"].shape == (3, 2, *SIZE)
            assert torch.equal(out["labels"], labels)
            for n, image in enumerate(eager):
                for j, d in enumerate(image[:2]):
                    assert float((out["cams"][n, j] - d.cam).abs().max()) <= 1e-4
            with pytest.raises(InputError, match="at most 3 boxes"):
                graph(x, boxes.repeat(1, 2, 1), labels.repeat(1, 2))
    with pytest.raises(ExportError, match="runtime='openvino' computes wrong maps"):
        export.load(tmp_path / "e.onnx", runtime="openvino")


@pytest.mark.slow
@pytest.mark.parametrize("name, method", [("yolo11n", "gradcam"), ("yolov8n", "eigencam")])
def test_yolo11_and_eigencam_graphs(tmp_path, name, method):
    exp = Explainer.for_detector(yolo(name), method=method)
    x = yolo_images(2, seed=11, size=SIZE)
    export.to_onnx(exp, tmp_path / "g.onnx", x[:1], max_boxes=3, score_threshold=THRESHOLD)
    eager = exp.explain_detections(x, score_threshold=THRESHOLD, max_boxes=3)
    found = export.load(tmp_path / "g.onnx").explain_detections(x)
    assert [len(d) for d in found] == [len(d) for d in eager]
    for a, b in zip(sum(eager, []), sum(found, [])):
        assert a.label == b.label and float((a.cam - b.cam).abs().max()) <= MAP_TOLERANCE


@slow
def test_cli_explains_pictures_with_an_exported_graph(graphs, tmp_path, capsys):
    import cv2
    import skimage.data

    from deploycam.cli import main

    _, files = graphs
    picture = tmp_path / "cat.png"
    cv2.imwrite(str(picture), skimage.data.chelsea()[:, :, ::-1])
    for backend in runtimes():
        out = tmp_path / backend
        assert main(["explain", str(picture), "--runtime", files["detections"], "--backend", backend,
                     "--out", str(out)]) == 0
        written = sorted(os.listdir(out))
        assert written and all(name.startswith("cat_") and name.endswith("_gradcam.png") for name in written)
        assert cv2.imread(str(out / written[0])).shape[:2] == (300, 451)  # drawn back on the picture
        assert f"({backend}/" in capsys.readouterr().out
    assert main(["explain", str(picture), "--runtime", files["boxes"], "--out", str(tmp_path / "b")]) != 0
    assert "explains given boxes" in capsys.readouterr().err
    assert main(["explain", str(picture), "--runtime", files["detections"], "--out", str(tmp_path / "c"),
                 "--size", "640"]) != 0
    assert "drop --size 640" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_exports_a_yolo_explanation_and_checks_it(tmp_path, capsys):
    from deploycam.cli import main

    assert main(["export", "--model", "yolov8n", "--out", str(tmp_path / "y.onnx"), "--size", "128",
                 "--max-boxes", "2"]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "targets=detections" in printed and "check" in printed
    assert export.load(tmp_path / "y.onnx").info.max_boxes == 2
    assert main(["export", "--model", "yolov8n", "--out", str(tmp_path / "y.pt")]) != 0
    assert "export to ONNX" in capsys.readouterr().err
