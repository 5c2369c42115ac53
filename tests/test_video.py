"""explainer.video / deploycam explain clip.avi: every frame explained (the same classes as explaining the
decoded frames directly), batched or one at a time, with an exported graph too, and the CLI's checks."""

from __future__ import annotations

import cv2
import pytest
import torch

from deploycam.cli import main
from explainer import Explainer, InputError
from explainer.imaging import Preprocess
from explainer.video import explain_video
from tests.helpers import calibrated_model, write_video

PRE = Preprocess(crop_size=64, resize="squash")


@pytest.fixture
def clip(tmp_path):
    path = tmp_path / "clip.avi"
    write_video(path, 7, size=(80, 60))
    return path


@pytest.fixture(scope="module")
def explainer():
    return Explainer(calibrated_model("resnet18"), "layer4")


def decoded_frames(path) -> torch.Tensor:
    capture, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, bgr = capture.read()
        if not ok:
            return torch.stack(frames)
        frames.append(PRE(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))[0])


@pytest.mark.parametrize("latency", [False, True])
def test_every_frame_is_explained_and_written(clip, tmp_path, explainer, latency):
    out = tmp_path / "out.avi"
    run = explain_video(str(clip), explainer, str(out), PRE, batch_size=3, latency=latency)
    assert run.frames == 7 and run.fps > 0
    assert run.targets == explainer(decoded_frames(clip)).targets.tolist()
    written = cv2.VideoCapture(str(out))
    assert int(written.get(cv2.CAP_PROP_FRAME_COUNT)) == 7
    ok, frame = written.read()
    assert ok and frame.shape == (64, 64, 3)


def test_an_exported_graph_explains_the_video_and_mp4_is_written(clip, tmp_path, explainer):
    import export

    export.to_onnx(explainer, tmp_path / "g.onnx", torch.randn(2, 3, 64, 64))
    run = explain_video(str(clip), export.load(tmp_path / "g.onnx"), str(tmp_path / "o.mp4"), PRE, max_frames=4)
    assert run.frames == 4 and run.targets == explainer(decoded_frames(clip)[:4]).targets.tolist()
    with pytest.raises(InputError, match="cannot open"):
        explain_video(str(tmp_path / "missing.avi"), explainer, str(tmp_path / "x.avi"), PRE)


def test_cli_explains_a_video(clip, tmp_path, capsys):
    out = tmp_path / "clip_cam.avi"
    argv = ["explain", str(clip), "--model", "resnet18", "--size", "64", "--resize", "squash", "--out", str(out)]
    assert main(argv) == 0
    assert "7 frame(s)" in capsys.readouterr().out and out.is_file()
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite", "--latency", "--max-frames", "2"]) == 0
    printed = capsys.readouterr().out
    assert "2 frame(s)" in printed and "one frame at a time" in printed
    assert main(["explain", "--camera", "0", "--out", str(tmp_path / "c.avi")]) == 2
    assert "--max-frames" in capsys.readouterr().err
    assert main(["explain", "--out", str(tmp_path / "x")]) == 2


def test_the_cli_knows_the_video_suffixes_the_library_reads():
    from deploycam.cli.explain_cmd import VIDEO_SUFFIXES as CLI_SUFFIXES
    from explainer.imaging import VIDEO_SUFFIXES

    assert CLI_SUFFIXES == VIDEO_SUFFIXES
