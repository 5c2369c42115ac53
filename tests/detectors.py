"""Seeded random torchvision detectors made decisive, test images, and targets (shared by the detector tests)."""

from __future__ import annotations

import functools

import torch
from torchvision.models import detection as D

from explainer import DetectionTarget

#: (builder, target) small enough for seconds on a CPU: a min_size of 160 keeps 160x224 inputs unpadded
DETECTORS = {
    "fasterrcnn_mobilenet_v3_large_fpn": dict(box_score_thresh=0.0, min_size=160, max_size=320),
    "retinanet_resnet50_fpn": dict(score_thresh=0.0, min_size=160, max_size=320),
    "fcos_resnet50_fpn": dict(score_thresh=0.0, min_size=160, max_size=320),
    "ssdlite320_mobilenet_v3_large": dict(score_thresh=0.0),
}
SLOW = {"maskrcnn_resnet50_fpn": dict(box_score_thresh=0.0, min_size=160, max_size=320),
        "fasterrcnn_resnet50_fpn_v2": dict(box_score_thresh=0.0, min_size=160, max_size=320),
        "ssd300_vgg16": dict(score_thresh=0.0)}


@functools.cache
def detector(name: str) -> torch.nn.Module:
    """A seeded random detector made decisive: batch norm statistics estimated on random images (as
    tests.helpers.calibrated_model does), classification logits scaled so scores spread without
    saturating. Untrained defaults score every box alike (~0.011), so which boxes survive NMS flips
    between float32 and float64 and no reference can match the same box."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = D.__dict__[name](weights=None, weights_backbone=None, **{**DETECTORS, **SLOW}[name])
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # a cumulative average over the calibration batch
        model.backbone.train()
        with torch.no_grad():  # through the detector's own transform (SSD resizes to 300x300)
            model.backbone(model.transform(list(torch.rand(4, 3, 160, 224)))[0].tensors)
        for pname, p in model.named_parameters():
            if "cls_logits.weight" in pname:
                p.data.mul_(20)
            elif "cls_score.weight" in pname:
                p.data.mul_(0.05)
        return model.eval()


def images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 160, 224, generator=torch.Generator().manual_seed(seed))


def target_of(model, x: torch.Tensor, index: int = 0) -> DetectionTarget:
    """Image ``index``'s top detection as the target: its label, and its box shrunk by 2 px a side. (At the
    detection's own box the IoU is exactly 1, a kink of min/max where autograd picks a subgradient that a
    float64 run, whose box differs by 1e-5, does not: an offset box keeps the IoU term smooth.)"""
    with torch.no_grad():
        found = model(list(x))[index]
    box = found["boxes"][0]
    inset = torch.clamp((box[2:] - box[:2]) / 4, max=2.0)
    box = torch.cat([box[:2] + inset, box[2:] - inset])
    return DetectionTarget([int(found["labels"][0])], box[None].tolist(), same_label=True)
