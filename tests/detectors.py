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


@functools.cache
def tiny_detector() -> torch.nn.Module:
    """A seeded Faster R-CNN with an 8-channel, two-level FPN on resnet18 (plus its max-pooled level), 50
    proposals: small enough for perturbation methods (one detector run per channel or position) in
    seconds. Batch norm calibrated and logits scaled, as :func:`detector` does."""
    from torchvision.models import resnet18
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        backbone = BackboneWithFPN(resnet18(weights=None), return_layers={"layer3": "0", "layer4": "1"},
                                   in_channels_list=[256, 512], out_channels=8)
        anchors = AnchorGenerator(sizes=((32,), (64,), (128,)), aspect_ratios=((0.5, 1.0, 2.0),) * 3)
        model = FasterRCNN(backbone, num_classes=5, rpn_anchor_generator=anchors, min_size=160, max_size=320,
                           rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=50, box_detections_per_img=20,
                           box_score_thresh=0.0)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None
        model.backbone.train()
        with torch.no_grad():
            model.backbone(model.transform(list(torch.rand(4, 3, 160, 224)))[0].tensors)
        for pname, p in model.named_parameters():
            if "cls_score.weight" in pname:
                p.data.mul_(20)
        return model.eval()
