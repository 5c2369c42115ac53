"""explainer.dataset / deploycam explain-dataset: rows equal direct explainer calls, unreadable files become
rows, the Parquet parts survive a crash and a rerun resumes, workers change nothing."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("pyarrow")

from deploycam.cli import main  # noqa: E402
from explainer import Explainer, InputError  # noqa: E402
from explainer.dataset import explain_dataset, image_files, read_results  # noqa: E402
from explainer.imaging import Preprocess, load_image  # noqa: E402
from tests.helpers import calibrated_model, write_video  # noqa: E402

PRE = Preprocess(crop_size=64, resize_size=72)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    (root / "a" / "b").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(7):
        sub = "a/b/" if i % 2 else ""
        cv2.imwrite(str(root / f"{sub}img{i}.png"), rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return root


@pytest.fixture(scope="module")
def explainer():
    return Explainer(calibrated_model("resnet18"), "layer4")


def test_sources_folder_and_list_file(folder, tmp_path):
    found = image_files(folder)
    assert [f.path for f in found][:2] == ["img0.png", "img2.png"] and "a/b/img1.png" in [f.path for f in found]
    assert len(found) == 8
    listing = tmp_path / "list.txt"
    listing.write_text("# two images\nimages/img0.png\n\nimages/a/b/img1.png\n")
    listed = image_files(listing)
    assert [f.path for f in listed] == ["images/img0.png", "images/a/b/img1.png"]
    assert os.path.isfile(listed[1].file)
    with pytest.raises(InputError, match="neither a folder nor a list file"):
        image_files(tmp_path / "missing")


def test_rows_equal_direct_calls_and_bad_files_become_rows(folder, tmp_path, explainer):
    run = explain_dataset(folder, explainer, tmp_path / "r.parquet", preprocess=PRE, batch_size=3, rows_per_part=3,
                          progress=False)
    assert (run.rows, run.errors, run.images, run.skipped) == (8, 1, 7, 0)
    assert len(os.listdir(tmp_path / "r.parquet")) == 3  # 8 rows in parts of 3
    rows = {r["path"]: r for r in read_results(tmp_path / "r.parquet").to_pylist()}
    assert "InputError" in rows["a/broken.jpg"]["error"] and rows["a/broken.jpg"]["cam"] is None
    x = torch.stack([PRE(load_image(folder / p))[0] for p in ("img0.png", "a/b/img5.png")])
    direct = explainer(x)
    for i, path in enumerate(("img0.png", "a/b/img5.png")):
        row = rows[path]
        assert row["target"] == int(direct.targets[i]) and row["method"] == "gradcam" and row["layer"] == "layer4"
        cam = np.array(row["cam"], dtype=np.float32).reshape(row["cam_shape"])
        assert np.abs(cam - direct.raw[i].numpy()).max() <= 1e-5 * max(1.0, float(direct.raw[i].abs().max()))
        assert row["probability"] == pytest.approx(float(direct.probabilities[i, row["target"]]), rel=1e-5)
        assert row["error"] == ""


def test_topk_metrics_overlays_and_a_runtime(folder, tmp_path, explainer):
    run = explain_dataset(folder, explainer, tmp_path / "k.parquet", preprocess=PRE, topk=2, metrics=["deletion"],
                          progress=False, overlays=tmp_path / "pictures")
    table = read_results(tmp_path / "k.parquet").to_pylist()
    pictures = sorted(p.relative_to(tmp_path / "pictures").as_posix() for p in (tmp_path / "pictures").rglob("*.png"))
    assert len(pictures) == 14 and any(p.startswith("a/b/img1_") for p in pictures)
    assert load_image(tmp_path / "pictures" / pictures[0]).shape == (64, 64, 3)
    assert run.rows == 7 * 2 + 1 and all(0 <= r["deletion"] <= 1 for r in table if not r["error"])
    with pytest.raises(InputError, match="unknown metric"):
        explain_dataset(folder, explainer, tmp_path / "m.parquet", metrics=["accuracy"])
    import export

    export.to_onnx(explainer, tmp_path / "g.onnx", torch.randn(2, 3, 64, 64))
    runtime = export.load(tmp_path / "g.onnx")
    explain_dataset(folder, runtime, tmp_path / "o.parquet", preprocess=PRE, progress=False)
    rows = [r for r in read_results(tmp_path / "o.parquet").to_pylist() if not r["error"]]
    assert rows[0]["cam_shape"] == [64, 64]  # exported graphs output the normalised input-size map
    with pytest.raises(InputError, match="metrics need the model"):
        explain_dataset(folder, runtime, tmp_path / "p.parquet", metrics=["insertion"])


def crashing_on_third_call(explainer):
    """The explainer, except that its third call raises (a crash in the middle of a run)."""
    calls = {"n": 0}

    def crashing(x, targets=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("power cut")
        return explainer(x, targets)

    return crashing


def test_a_crashed_run_resumes_without_duplicates(folder, tmp_path, explainer):
    crashing = crashing_on_third_call(explainer)
    out = tmp_path / "c.parquet"
    with pytest.raises(RuntimeError, match="power cut"):
        explain_dataset(folder, crashing, out, preprocess=PRE, batch_size=2, rows_per_part=2, progress=False)
    written = len(read_results(out).to_pylist())
    assert 0 < written < 8
    with pytest.raises(InputError, match="resume"):
        explain_dataset(folder, explainer, out, preprocess=PRE, progress=False)
    run = explain_dataset(folder, explainer, out, preprocess=PRE, resume=True, progress=False)
    paths = [r["path"] for r in read_results(out).to_pylist()]
    assert sorted(paths) == sorted(f.path for f in image_files(folder)) and run.skipped == written


def test_workers_change_nothing(folder, tmp_path, explainer):
    explain_dataset(folder, explainer, tmp_path / "w0.parquet", preprocess=PRE, workers=0, progress=False)
    explain_dataset(folder, explainer, tmp_path / "w2.parquet", preprocess=PRE, workers=2, progress=False)
    a = {r["path"]: r["cam"] for r in read_results(tmp_path / "w0.parquet").to_pylist()}
    b = {r["path"]: r["cam"] for r in read_results(tmp_path / "w2.parquet").to_pylist()}
    assert a == b


def test_cli_explain_dataset(folder, tmp_path, capsys):
    out = tmp_path / "cli.parquet"
    argv = ["explain-dataset", str(folder), "--out", str(out), "--model", "resnet18", "--size", "64", "--workers", "0"]
    assert main(argv) == 1  # one unreadable file: a row with its error, exit 1
    captured = capsys.readouterr()
    assert "wrote 8 row(s)" in captured.out and "images/s" in captured.out and "could not be read" in captured.err
    assert main(argv) == 2 and "--resume" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0 and "8 already done" in capsys.readouterr().out
    assert main(["explain-dataset", str(folder), "--out", str(out), "--class", "3", "--topk", "2"]) == 2


@pytest.mark.slow
def test_ray_engine_rows_equal_the_local_engine(folder, tmp_path):
    """A local Ray cluster (2 CPUs, one explainer actor) gives the rows the local engine gives, video frames
    included, and resumes a video mid-way."""
    pytest.importorskip("ray")
    from deploycam.cli.common import ExplainerSpec

    write_video(folder / "a" / "clip.avi", 4, seed=4)
    spec = ExplainerSpec("resnet18", None, "layer4", "gradcam", None, None, "nchw", None, "onnxruntime", "cpu", 64)
    explain_dataset(folder, spec(), tmp_path / "local.parquet", preprocess=PRE, batch_size=3, progress=False)
    run = explain_dataset(folder, spec, tmp_path / "ray.parquet", preprocess=PRE, batch_size=3, progress=False,
                          engine="ray", actors=1)
    assert (run.rows, run.images, run.errors) == (12, 11, 1)
    local = {r["path"]: r for r in read_results(tmp_path / "local.parquet").to_pylist()}
    remote = {r["path"]: r for r in read_results(tmp_path / "ray.parquet").to_pylist()}
    assert local.keys() == remote.keys()
    for path, row in local.items():
        other = remote[path]
        assert (row["target"], row["error"][:10], row["cam_shape"]) == (other["target"], other["error"][:10],
                                                                         other["cam_shape"])
        if row["cam"] is not None:
            assert np.abs(np.array(row["cam"]) - np.array(other["cam"])).max() <= 1e-5 * max(1.0, max(row["cam"]))
    with pytest.raises(InputError, match="zero-argument function"):
        explain_dataset(folder, spec(), tmp_path / "bad.parquet", engine="ray")
    # resume on Ray: the first two frames done
    partial = tmp_path / "partial.parquet"
    explain_dataset(folder / "a" / "clip.avi", spec(), partial, preprocess=PRE, batch_size=1, rows_per_part=1,
                    progress=False)
    for part in sorted(partial.iterdir())[2:]:
        part.unlink()
    again = explain_dataset(folder / "a" / "clip.avi", spec, partial, preprocess=PRE, batch_size=3, resume=True,
                            progress=False, engine="ray", actors=1)
    assert (again.skipped, again.images) == (2, 2)
    assert sorted(r["path"] for r in read_results(partial).to_pylist()) == [f"clip.avi#frame={i}" for i in range(4)]


def test_a_torch_dataset_is_a_source(tmp_path, explainer):
    class Frames(torch.utils.data.Dataset):
        def __init__(self):
            self.x = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(3))

        def __len__(self):
            return 5

        def __getitem__(self, i):
            if i == 3:
                raise OSError("sensor dropout")
            return self.x[i], i % 2  # (image, label) as most datasets return

    run = explain_dataset(Frames(), explainer, tmp_path / "t.parquet", batch_size=2, progress=False)
    assert (run.rows, run.errors, run.images) == (5, 1, 4)
    rows = {r["path"]: r for r in read_results(tmp_path / "t.parquet").to_pylist()}
    assert "sensor dropout" in rows["3"]["error"]
    direct = explainer(Frames().x[[0, 4]])
    assert [rows["0"]["target"], rows["4"]["target"]] == direct.targets.tolist()
    again = explain_dataset(Frames(), explainer, tmp_path / "t.parquet", resume=True, progress=False)
    assert again.skipped == 5 and again.rows == 0
    with pytest.raises(InputError, match="local engine"):
        explain_dataset(Frames(), explainer, tmp_path / "u.parquet", engine="ray")
    # overlays: drawn on the item's picture (its normalisation undone with the preprocess given)
    explain_dataset(Frames(), explainer, tmp_path / "v.parquet", progress=False, overlays=tmp_path / "o")
    written = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert written == sorted(f"{i}_{rows[str(i)]['target']}_gradcam.png" for i in (0, 1, 2, 4))


def test_overlay_pictures_are_the_views_the_model_saw():
    """Preprocess.picture undoes to_tensor exactly, so overlays need no second decode of the file."""
    view = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    for pre in (Preprocess(), Preprocess(bgr=True, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25))):
        assert np.array_equal(pre.picture(pre.to_tensor(view)), view)


def test_videos_are_sources_one_row_per_frame(tmp_path, explainer):
    root = tmp_path / "drive"
    (root / "cam1").mkdir(parents=True)
    cv2.imwrite(str(root / "still.png"), np.zeros((40, 50, 3), np.uint8))
    first = write_video(root / "cam1" / "front.avi", 5, seed=1)
    second = write_video(root / "rear.avi", 3, seed=2)
    (root / "broken.mp4").write_bytes(b"not a video")
    assert len(first) == 5 and len(second) == 3
    run = explain_dataset(root, explainer, tmp_path / "v.parquet", preprocess=PRE, batch_size=2, workers=2,
                          progress=False, overlays=tmp_path / "o")
    rows = {r["path"]: r for r in read_results(tmp_path / "v.parquet").to_pylist()}
    assert (run.images, run.errors) == (1 + 5 + 3, 1) and "cannot open" in rows["broken.mp4"]["error"]
    assert sorted(p for p in rows if "#frame=" in p) == sorted(
        [f"cam1/front.avi#frame={i}" for i in range(5)] + [f"rear.avi#frame={i}" for i in range(3)])
    direct = explainer(torch.stack([PRE(f)[0] for f in first]))
    for i in range(5):
        row = rows[f"cam1/front.avi#frame={i}"]
        assert row["target"] == int(direct.targets[i])
        cam = np.array(row["cam"], dtype=np.float32).reshape(row["cam_shape"])
        assert np.abs(cam - direct.raw[i].numpy()).max() <= 1e-5 * max(1.0, float(direct.raw[i].abs().max()))
    assert (tmp_path / "o" / "cam1" / f"front_frame000003_{rows['cam1/front.avi#frame=3']['target']}_gradcam.png").exists()
    # a video file as the source itself; a rerun resumes frame by frame
    single = tmp_path / "single.parquet"
    explain_dataset(root / "rear.avi", explainer, single, preprocess=PRE, progress=False)
    again = explain_dataset(root / "rear.avi", explainer, single, preprocess=PRE, resume=True, progress=False)
    assert (again.skipped, again.rows) == (3, 0)
    assert sorted(r["path"] for r in read_results(single).to_pylist()) == [f"rear.avi#frame={i}" for i in range(3)]


def test_a_crashed_video_run_resumes_mid_video(tmp_path, explainer):
    write_video(tmp_path / "clip.avi", 4, seed=3)
    crashing = crashing_on_third_call(explainer)
    out = tmp_path / "c.parquet"
    with pytest.raises(RuntimeError, match="power cut"):
        explain_dataset(tmp_path / "clip.avi", crashing, out, preprocess=PRE, batch_size=1, rows_per_part=1,
                        progress=False)
    again = explain_dataset(tmp_path / "clip.avi", explainer, out, preprocess=PRE, batch_size=1, resume=True,
                            progress=False)
    assert (again.skipped, again.images) == (2, 2)
    assert sorted(r["path"] for r in read_results(out).to_pylist()) == [f"clip.avi#frame={i}" for i in range(4)]
