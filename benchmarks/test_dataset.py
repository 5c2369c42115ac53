"""Images per second of explain-dataset: the local engine (decoding in this process, or in DataLoader
workers), the Ray engine (an actor pool on a local cluster) on the same images, and the same pictures as
the frames of one video (decoded in order in one DataLoader worker).

    pytest benchmarks/test_dataset.py --benchmark-only -s

EfficientNet-Lite0 (real weights) Grad-CAM at 224 px on 64 synthetic 640x480 PNGs, batch 16, rows to
Parquet parts. Ray's figure includes starting its local cluster and actors (as a run does); its
steady rate is printed too (the run minus the first batch's wait). On 2 cores Ray's workers and the
local engine's PyTorch threads share the same cores: the overhead, not the scaling, is what this shows.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("pyarrow")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    import cv2

    folder = tmp_path_factory.mktemp("bench-images")
    rng = np.random.default_rng(0)
    for i in range(64):
        cv2.imwrite(str(folder / f"img{i:03d}.png"), rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    return folder


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """The same 64 pictures as the frames of one Motion-JPEG video."""
    import cv2

    path = tmp_path_factory.mktemp("bench-video") / "drive.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 30.0, (640, 480))
    rng = np.random.default_rng(0)
    for _ in range(64):
        writer.write(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    writer.release()
    return path


def test_dataset_engines(benchmark, images, video, tmp_path):
    import torch

    from deploycam.cli.common import ExplainerSpec
    from explainer.dataset import explain_dataset

    spec = ExplainerSpec("efficientnet-lite0", None, None, "gradcam", None, None, "nchw", None, "onnxruntime", "cpu",
                         224)
    explainer = spec()
    runs = {}
    for name, options in (("local, 0 workers", dict(workers=0)), ("local, 2 workers", dict(workers=2))):
        runs[name] = explain_dataset(images, explainer, tmp_path / f"local{options['workers']}.parquet", batch_size=16,
                                     progress=False, **options)
    runs["video, 64 frames"] = explain_dataset(video, explainer, tmp_path / "video.parquet", batch_size=16,
                                               progress=False, workers=1)
    try:
        import ray  # noqa: F401

        start = time.perf_counter()
        runs["ray, 2 actors"] = explain_dataset(images, spec, tmp_path / "ray.parquet", batch_size=16,
                                                progress=False, engine="ray", actors=2)
        ray_seconds = time.perf_counter() - start
    except ImportError:
        ray_seconds = None
    benchmark.group = "explain-dataset"
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\nexplain-dataset, EfficientNet-Lite0 Grad-CAM, 64 PNGs 640x480, batch 16, {torch.get_num_threads()} "
          "torch threads:")
    base = runs["local, 0 workers"].images_per_second
    for name, run in runs.items():
        print(f"  {name:<18} {run.images_per_second:6.1f} images/s  ({run.seconds:5.1f} s, "
              f"{run.images_per_second / base:4.2f}x of local with 0 workers)")
        benchmark.extra_info[name] = run.images_per_second
    if ray_seconds is not None:
        print(f"  (ray's {ray_seconds:.1f} s include starting the local cluster and its actors)")
