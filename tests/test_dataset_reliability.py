"""explain-dataset and video as a stranger uses them: broken files, odd names, a run killed with SIGKILL and
resumed, an output folder of another run, truncated videos, an output path that is the input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("pyarrow")

from deploycam.cli import main  # noqa: E402
from explainer import Explainer, InputError  # noqa: E402
from explainer.dataset import explain_dataset, read_results  # noqa: E402
from explainer.imaging import Preprocess, load_image  # noqa: E402
from explainer.video import explain_video  # noqa: E402
from tests.helpers import calibrated_model, write_video  # noqa: E402

PRE = Preprocess(crop_size=64, resize_size=72)
ODD = "sub dir ü/kaffee ☕ 1.png"  # a space, non-ASCII letters and a symbol, in a sub-folder


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    (root / "sub dir ü").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", ODD):
        ok, data = cv2.imencode(".png", rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
        (root / name).write_bytes(data.tobytes())  # cv2.imwrite cannot take every non-ASCII path
    (root / "zero bytes.jpg").write_bytes(b"")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return root


@pytest.fixture(scope="module")
def explainer():
    return Explainer(calibrated_model("resnet18"), "layer4")


def _rows(out) -> dict[str, dict]:
    rows = read_results(out).to_pylist()
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)), "a path was written twice"
    return {r["path"]: r for r in rows}


def test_broken_files_are_a_row_each_and_odd_names_work(folder, tmp_path, explainer):
    run = explain_dataset(folder, explainer, tmp_path / "r.parquet", preprocess=PRE, batch_size=2, progress=False)
    rows = _rows(tmp_path / "r.parquet")
    assert (run.rows, run.errors, run.images) == (5, 2, 3) and set(rows) == {"a.png", "b.png", ODD, "zero bytes.jpg",
                                                                             "corrupt.png"}
    assert "InputError" in rows["zero bytes.jpg"]["error"] and "InputError" in rows["corrupt.png"]["error"]
    assert rows["zero bytes.jpg"]["cam"] is None and rows["corrupt.png"]["target"] is None
    direct = explainer(PRE(load_image(folder / ODD))[0][None])
    cam = np.array(rows[ODD]["cam"], dtype=np.float32).reshape(rows[ODD]["cam_shape"])
    assert rows[ODD]["target"] == int(direct.targets[0]) and np.abs(cam - direct.raw[0].numpy()).max() <= 1e-4
    overlays = tmp_path / "over lays ü"
    explain_dataset(folder, explainer, tmp_path / "o.parquet", preprocess=PRE, progress=False, overlays=overlays)
    assert (overlays / "sub dir ü").is_dir() and any(p.name.startswith("kaffee ☕ 1_") for p in overlays.rglob("*.png"))


def test_resuming_another_runs_output_is_refused(folder, tmp_path, explainer):
    out = tmp_path / "r.parquet"
    explain_dataset(folder, explainer, out, preprocess=PRE, progress=False)
    others = {
        "method": dict(explainer=explainer.with_method("layercam")),
        "layer": dict(explainer=Explainer(explainer._model, "layer3")),
        "model": dict(explainer=Explainer(calibrated_model("resnet18", seed=1), "layer4")),  # same class, other weights
        "topk": dict(topk=2),
        "targets": dict(targets=3),
        "input": dict(preprocess=Preprocess(crop_size=96, resize_size=104)),
        "metrics": dict(metrics=["deletion"]),
    }
    for key, change in others.items():
        options = dict(explainer=explainer, preprocess=PRE) | change
        with pytest.raises(InputError, match=rf"holds rows of another run \({key}: .* there, .* now"):
            explain_dataset(folder, options.pop("explainer"), out, resume=True, progress=False, **options)
    assert len(read_results(out)) == 5  # nothing was added by the refused runs
    same = explain_dataset(folder, Explainer(explainer._model, "layer4"), out, preprocess=PRE, resume=True,
                           progress=False)  # another explainer object of the same run resumes
    assert same.skipped == 5 and same.rows == 0


def test_a_wrapped_explainer_resumes_and_old_parts_are_accepted(folder, tmp_path, explainer):
    """A caller's own wrapper function has no method or weights to compare: only the run options are."""
    out = tmp_path / "w.parquet"
    explain_dataset(folder, lambda x, t=None: explainer(x, t), out, preprocess=PRE, rows_per_part=2, progress=False)
    run = explain_dataset(folder, explainer, out, preprocess=PRE, resume=True, progress=False)
    assert run.skipped == 5
    with pytest.raises(InputError, match="topk"):
        explain_dataset(folder, explainer, out, preprocess=PRE, topk=2, resume=True, progress=False)


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_without_lost_or_duplicated_rows(tmp_path):
    """The CLI in its own process, SIGKILLed once a few parts are on disk; --resume completes the folder."""
    root = tmp_path / "many"
    root.mkdir()
    rng = np.random.default_rng(1)
    for i in range(48):
        cv2.imwrite(str(root / f"img{i:02d}.png"), rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    out = tmp_path / "k.parquet"
    argv = ["explain-dataset", str(root), "--out", str(out), "--model", "resnet18", "--size", "64", "--workers", "0",
            "--batch-size", "2", "--rows-per-part", "2"]
    process = subprocess.Popen([sys.executable, "-m", "deploycam.cli", *argv], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if len(list(out.glob("part-*.parquet"))) >= 3:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed: make it longer"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = len(read_results(out))
    assert 0 < before < 48
    assert main(argv + ["--resume"]) == 0
    rows = _rows(out)
    assert sorted(rows) == sorted(f"img{i:02d}.png" for i in range(48)) and all(r["error"] == "" for r in rows.values())


def _truncated_video(tmp_path, frames: int = 12, keep: float = 0.5):
    """An MJPG .avi cut to ``keep`` of its bytes (OpenCV still opens it and decodes the frames before the cut)."""
    whole = tmp_path / "whole.avi"
    write_video(whole, frames)
    cut = tmp_path / "cut clip ü.avi"
    data = whole.read_bytes()
    cut.write_bytes(data[: int(len(data) * keep)])
    return cut


def test_a_truncated_video_gives_its_frames_and_one_error_row(tmp_path, explainer):
    cut = _truncated_video(tmp_path)
    decodable = 0
    capture = cv2.VideoCapture(str(cut))
    while capture.read()[0]:
        decodable += 1
    assert 0 < decodable < 12
    out = tmp_path / "v.parquet"
    run = explain_dataset(cut, explainer, out, preprocess=PRE, progress=False)
    rows = _rows(out)
    frames = sorted(p for p, r in rows.items() if not r["error"])
    (missing,) = [p for p, r in rows.items() if r["error"]]
    assert len(frames) == decodable and missing.endswith(f"#frame={decodable}") and run.errors == 1
    assert f"decoding stopped after {decodable} of the 12 frames" in rows[missing]["error"]
    again = explain_dataset(cut, explainer, out, preprocess=PRE, resume=True, progress=False)
    assert again.rows == 0 and len(_rows(out)) == decodable + 1  # the error is not reported twice
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    explain_dataset(empty, explainer, tmp_path / "e.parquet", preprocess=PRE, progress=False)
    (row,) = _rows(tmp_path / "e.parquet").values()
    assert row["path"] == "empty.avi" and "cannot open it as a video" in row["error"]


def test_explaining_a_truncated_or_empty_video_says_so(tmp_path, capsys):
    cut = _truncated_video(tmp_path)
    argv = ["explain", str(cut), "--model", "resnet18", "--size", "64", "--out", str(tmp_path / "out.avi")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "decoding stopped after" in err and "of the 12 frames" in err and (tmp_path / "out.avi").stat().st_size
    (tmp_path / "empty.avi").write_bytes(b"")
    assert main(["explain", str(tmp_path / "empty.avi"), "--model", "resnet18", "--out", str(tmp_path / "o2.avi")]) == 2
    err = capsys.readouterr().err
    assert "cannot open" in err and "(the file is empty)" in err


def test_the_input_video_is_never_the_output(tmp_path, capsys, explainer):
    clip = tmp_path / "clip.avi"
    write_video(clip, 3)
    original = clip.read_bytes()
    link = tmp_path / "link.avi"
    link.symlink_to(clip)
    for out in (str(clip), os.path.join(str(tmp_path), ".", "clip.avi"), str(link)):
        assert main(["explain", str(clip), "--out", out, "--model", "resnet18", "--size", "64", "--overwrite"]) == 2
        assert "is the input video" in capsys.readouterr().err
    with pytest.raises(InputError, match="the input is never overwritten"):
        explain_video(str(link), explainer, str(clip), Preprocess(crop_size=64, resize="squash"))
    assert clip.read_bytes() == original


def test_a_video_with_no_decodable_frame_leaves_no_output(tmp_path, explainer, monkeypatch):
    clip = tmp_path / "clip.avi"
    write_video(clip, 2)
    monkeypatch.setattr(cv2.VideoCapture, "read", lambda self: (False, None))
    with pytest.raises(InputError, match="gave no frames OpenCV could decode"):
        explain_video(str(clip), explainer, str(tmp_path / "o.avi"), Preprocess(crop_size=64, resize="squash"))
    assert not (tmp_path / "o.avi").exists()
    assert torch.is_grad_enabled()
