"""runtime='opencv' on every OpenCV the project accepts: the graph engine found by feature (5.0's ENGINE_NEW,
5.1's ENGINE_OPENCV), an OpenCV without it a clear ExportError naming the version found and the ones supported.

The real engines run in tests/test_engines.py; CI runs those once more on the oldest accepted OpenCV (5.0).
Here the engine API of each release is stood in for, so every branch runs on whichever OpenCV is installed."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import export
from explainer import Explainer
from explainer.errors import ExportError
from export.opencv_dnn import SUPPORTED, new_engine
from tests.helpers import calibrated_model


def _fake_cv2(version: str, **engines: int) -> SimpleNamespace:
    """A ``cv2`` module of ``version`` whose ``cv2.dnn`` has these ``ENGINE_*`` constants."""
    dnn = SimpleNamespace(readNetFromONNX=lambda *a: None, **engines)
    return SimpleNamespace(__version__=version, dnn=dnn, error=RuntimeError)


@pytest.mark.parametrize("cv2, expected", [
    (_fake_cv2("5.0.0", ENGINE_CLASSIC=1, ENGINE_NEW=2, ENGINE_AUTO=3, ENGINE_ORT=4), 2),
    (_fake_cv2("5.1.0", ENGINE_AUTO=0, ENGINE_OPENCV=1, ENGINE_ORT=2), 1),
], ids=["5.0", "5.1"])
def test_the_graph_engine_is_found_by_feature(cv2, expected):
    assert new_engine(cv2) == expected


@pytest.mark.parametrize("cv2, message", [
    (_fake_cv2("4.14.0"), r"OpenCV \(4\.14\.0\) has only the classic DNN engine"),
    (_fake_cv2("5.9.0", ENGINE_AUTO=0, ENGINE_FANCY=7), r"OpenCV \(5\.9\.0\) offers DNN engines deploycam does not "
                                                         r"know \(ENGINE_AUTO, ENGINE_FANCY\)"),
    (SimpleNamespace(__version__="5.1.0-custom"), r"OpenCV \(5\.1\.0-custom\) has no DNN module"),
], ids=["4.x", "unknown-api", "no-dnn"])
def test_an_unsupported_opencv_names_its_version_and_the_supported_ones(cv2, message):
    with pytest.raises(ExportError, match=message) as info:
        new_engine(cv2)
    assert SUPPORTED in str(info.value)


def test_export_load_on_an_old_opencv_is_an_export_error(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    exp = Explainer(calibrated_model("resnet18"), "layer4", "gradcam")
    export.to_onnx(exp, tmp_path / "g.onnx", torch.randn(1, 3, 64, 64))
    monkeypatch.setitem(sys.modules, "cv2", _fake_cv2("4.10.0"))
    with pytest.raises(ExportError, match=r"OpenCV \(4\.10\.0\).*supported: OpenCV 5\.0 and 5\.1"):
        export.load(tmp_path / "g.onnx", runtime="opencv")


def test_the_supported_versions_are_the_extras_bounds():
    """What the error message promises is what pyproject's `opencv` extra (and `dev`) install."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    (bound,) = [r for r in project["optional-dependencies"]["opencv"] if r.startswith("opencv-python-headless")]
    assert bound in project["optional-dependencies"]["dev"]
    assert re.search(r">=5\.0,<5\.2", bound) and "'opencv-python-headless>=5.0,<5.2'" in SUPPORTED
    core = [r for r in project["dependencies"] if r.startswith("opencv-python-headless")][0]
    assert core.endswith("<5.2"), "the core dependency must not let pip pick an OpenCV newer than the tested ones"


def test_the_installed_opencv_runs_an_exported_graph_or_says_why(tmp_path):
    """Whatever OpenCV this environment has: a working runtime within 1e-4 of eager, or the ExportError."""
    cv2 = pytest.importorskip("cv2")
    pytest.importorskip("onnxruntime")
    exp = Explainer(calibrated_model("resnet18"), "layer3", "gradcam")
    export.to_onnx(exp, tmp_path / "g.onnx", torch.randn(2, 3, 64, 64))
    try:
        new_engine(cv2)
    except ExportError:
        with pytest.raises(ExportError, match=re.escape(cv2.__version__)):
            export.load(tmp_path / "g.onnx", runtime="opencv")
        return
    rt = export.load(tmp_path / "g.onnx", runtime="opencv")
    x = torch.randn(3, 3, 64, 64)
    eager, ours = exp(x, [1, 2, 3]), rt(x, [1, 2, 3])
    assert float((eager.cams - ours.cams).abs().max()) <= 1e-4
    assert torch.equal(eager.logits.argmax(1), ours.logits.argmax(1))
