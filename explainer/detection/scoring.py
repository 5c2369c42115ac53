"""The detection score and the multi-layer map as plain, scriptable tensor code.

The eager :class:`~explainer.detection.explainer.DetectionExplainer` and the TorchScript export
(:mod:`export.detection_graph`) call these same functions, so the two cannot drift apart. (No
``from __future__ import annotations`` here: TorchScript reads the annotations as objects.)
"""


import torch
import torch.nn.functional as F
from torch import Tensor

from explainer.postprocess import normalize_maps

#: an IoU this close to 1 is the detection's own box (up to rounding): its IoU term adds no gradient
#: (written as a literal in box_score: TorchScript compiles it and cannot read module globals). 1e-4:
#: the same box decoded by ONNX Runtime differs from eager float32 by ~5e-5 px, an IoU 1e-6 below 1.
PERFECT_MATCH = 1e-4


def box_score(boxes: Tensor, labels: Tensor, scores: Tensor, ref_labels: Tensor, ref_boxes: Tensor,
              iou_threshold: float, same_label: bool) -> Tensor:
    """pytorch-grad-cam's ``FasterRCNNBoxScoreTarget`` of one image, as a 0-d tensor.

    For each reference box ``ref_boxes[j]`` ``(B, 4)`` (label ``ref_labels[j]``, ``(B,)``), the
    detection ``boxes`` ``(D, 4)`` that overlaps it most counts when the IoU exceeds ``iou_threshold``
    and its label matches: it adds ``IoU + scores[d]``. With ``same_label`` only detections of the
    reference's label compete. A reference label of -1 is padding and never matches. Differentiable
    through ``boxes`` and ``scores`` (the IoU term has no gradient at IoU >= 1 - ``PERFECT_MATCH``:
    explaining a detection by its own box explains its score); 0 (without grad) when there is no detection.
    """
    if boxes.shape[0] == 0 or ref_boxes.shape[0] == 0:
        return scores.new_zeros(())
    ref_labels = ref_labels.to(labels.device)
    ious = _box_iou(ref_boxes.to(boxes), boxes)  # (B, D)
    if same_label:
        ious = torch.where(labels[None, :] == ref_labels[:, None], ious, torch.full_like(ious, -1.0))
    best = ious.detach().argmax(dim=1)  # (B,)
    best_iou = ious.gather(1, best[:, None])[:, 0]
    # A detection explained with its own box sits at IoU == 1, the maximum, where the IoU is not
    # differentiable (min/max ties). Eager autograd splits the ties and gets 0; TorchScript's optimised
    # executor does not. Made explicit: at a perfect match the IoU term adds no gradient. "Perfect" is
    # within PERFECT_MATCH of 1: the same box recomputed in another batch or runtime differs by rounding
    # (1e-13 px in float64 on YOLOv8n; ~5e-5 px between eager float32 and ONNX Runtime), and an IoU of
    # 1 - 1e-6 would bring the whole box-regression gradient back, a different map for the same detection.
    best_iou = torch.where(best_iou.detach() >= 1.0 - 1e-4, best_iou.detach(), best_iou)  # 1e-4: PERFECT_MATCH
    valid = (best_iou.detach() > iou_threshold) & (labels[best] == ref_labels) & (ref_labels >= 0)
    return torch.where(valid, best_iou + scores[best], torch.zeros_like(best_iou)).sum()


def _box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boxes ``a`` ``(B, 4)`` and ``b`` ``(D, 4)`` (x1, y1, x2, y2): ``(B, D)``; torchvision's
    ``box_iou``, except that two zero-area boxes overlap 0 (not 0/0 = NaN: random or degenerate
    detectors output boxes clipped to a line), with a finite gradient."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.max(a[:, None, :2], b[:, :2])
    rb = torch.min(a[:, None, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    union = area_a[:, None] + area_b - inter
    positive = union > 0
    return torch.where(positive, inter / torch.where(positive, union, torch.ones_like(union)), torch.zeros_like(inter))


def combine_levels(raws: list[Tensor], height: int, width: int, canvas_height: int, canvas_width: int,
                   inner_height: int, inner_width: int) -> Tensor:
    """Multi-layer CAM, pytorch-grad-cam's convention, ``(N, K, height, width)`` in [0, 1].

    Each level's raw map ``(N, K, h_l, w_l)`` is ReLU'd and min-max normalised, resized to the
    detector's canvas ``(canvas_height, canvas_width)``, cropped to the image inside it
    (``inner_height x inner_width``: the transform pads to a multiple of 32) and resized to the
    input's ``height x width``; the levels are averaged and the average normalised again.
    """
    resized: list[Tensor] = []
    for raw in raws:
        m = normalize_maps(torch.relu(raw.detach()))
        m = F.interpolate(m, size=(canvas_height, canvas_width), mode="bilinear", align_corners=False)
        if inner_height != canvas_height or inner_width != canvas_width or height != canvas_height \
                or width != canvas_width:
            m = F.interpolate(m[:, :, :inner_height, :inner_width], size=(height, width), mode="bilinear",
                              align_corners=False)  # (the canvas is the image itself for YOLO: no second resize)
        resized.append(m)
    return normalize_maps(torch.stack(resized).mean(dim=0))
