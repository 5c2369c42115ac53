"""Seeded random Ultralytics YOLO detectors for tests (built from their yaml: offline, no weights), made decisive."""

from __future__ import annotations

import copy
import functools
import os

import pytest
import torch

YOLOS = ("yolov8n", "yolo11n")


@functools.cache
def yolo(name: str = "yolov8n") -> torch.nn.Module:
    """``YOLO(name + ".yaml").model`` seeded, with batch-norm statistics estimated on random images and the
    class convolutions rescaled: logits of spread ~1.5 around -2 (the initial prior, about -10 at 80
    classes, leaves every score ~1e-4 with gradients to match, and calibrated statistics alone saturate
    YOLO11's scores at 1.0), in eval mode."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    ultralytics = pytest.importorskip("ultralytics", reason="the yolo extra (ultralytics) is not installed")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ultralytics.YOLO(f"{name}.yaml").model
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None
        model.train()
        with torch.no_grad():
            model(torch.rand(4, 3, 256, 320))
        model.eval()
        head = model.model[-1]
        with torch.no_grad():  # class logits per level scaled to a spread of ~1.5 around -2
            logits = model(torch.rand(2, 3, 256, 320))[1]["scores"]  # (N, classes, anchors): P3, P4, P5 in order
            start = 0
            for stride, branch in zip(head.stride.tolist(), head.cv3):
                count = (256 // int(stride)) * (320 // int(stride))
                level = logits[:, :, start:start + count]
                start += count
                branch[-1].weight.mul_(1.5 / float(level.std()))
                branch[-1].bias.fill_(-2.0)
        return model


@functools.cache
def float64_yolo(name: str = "yolov8n") -> torch.nn.Module:
    return copy.deepcopy(yolo(name)).double()


def yolo_images(n: int = 1, seed: int = 0, size: tuple[int, int] = (256, 320)) -> torch.Tensor:
    return torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(seed))


def ultralytics_onnx(name: str, folder, size, dynamic: bool = True) -> str:
    """The seeded ``yolo(name)`` exported by ultralytics' own exporter into ``folder``: the path of the file.
    The exporter's device selection sets torch's threads to ``cpu_count - 1`` process-wide (1 on 2 cores):
    restored here, or every later test and benchmark in the session would run on one thread."""
    ultralytics = pytest.importorskip("ultralytics", reason="the yolo extra (ultralytics) is not installed")
    threads = torch.get_num_threads()
    cwd = os.getcwd()
    os.chdir(folder)  # the exporter writes next to the yaml name it was given
    try:
        wrapper = ultralytics.YOLO(f"{name}.yaml")
        wrapper.model = yolo(name)
        written = wrapper.export(format="onnx", imgsz=size, dynamic=dynamic, simplify=False, verbose=False)
        return os.path.join(os.fspath(folder), os.fspath(written))
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
