"""Targets of a dense (YOLO) head's decoded output as batched, exportable tensor code: no NMS op, no
``gather``/``nonzero``, no data-dependent shape -- what the ONNX graphs of :mod:`export.detector_onnx`
trace, so that ONNX Runtime, OpenVINO and OpenCV's DNN run them.

``decoded`` is ``(N, 4 + classes, anchors)``: ``cx, cy, w, h`` in input pixels, then each class's
probability (:meth:`explainer.detection.yolo.YoloParts.decoded`).

* :func:`top_detections` -- the ``k`` best detections of each image by greedy class-aware NMS unrolled
  ``k`` times: the first ``k`` boxes torchvision's ``batched_nms`` keeps, in the same order.
* :func:`matched_anchors` and :func:`scores_at` -- the score of reference boxes (one per target): among
  the anchors of the reference's label with confidence >= ``confidence``, the one whose box overlaps the reference most;
  the score is ``IoU + probability`` when the IoU exceeds ``iou_threshold`` (pytorch-grad-cam's box
  score, as :class:`~explainer.detection.DetectionTarget` with ``same_label=True``), else 0. For a
  detection's own box this is the detection itself, as in the eager explainer; for other boxes the
  graph looks at every confident anchor, not only those NMS keeps.
"""

import torch
from torch import Tensor

from explainer.detection.scoring import PERFECT_MATCH


def corners(xywh: Tensor) -> Tensor:
    """Boxes ``cx, cy, w, h`` ``(..., 4)`` -> ``x1, y1, x2, y2`` ``(..., 4)``."""
    centre, size = xywh[..., 0:2], xywh[..., 2:4]
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def xyxy(decoded: Tensor) -> Tensor:
    """``(N, A, 4)`` boxes ``x1, y1, x2, y2`` from ``decoded`` ``(N, 4 + classes, A)``."""
    return corners(decoded[:, 0:4].transpose(1, 2))


def paired_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boxes ``a`` and ``b`` ``(..., 4)`` (broadcast), 0 where the union is empty (no 0/0)."""
    wh = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter
    positive = union > 0
    return torch.where(positive, inter / torch.where(positive, union, torch.ones_like(union)), torch.zeros_like(inter))


def _pick(values: Tensor, onehot: Tensor) -> Tensor:
    """``values`` ``(N, A, D)`` at the anchors ``onehot`` ``(N, K, A)`` selects: ``(N, K, D)`` (a product, no gather)."""
    return torch.bmm(onehot, values)


def top_detections(decoded: Tensor, k: int, confidence: float, nms_iou: float,
                   score_threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(boxes (N, k, 4), scores (N, k), labels (N, k))``: each image's ``k`` best detections after the
    confidence filter and class-aware NMS, best first, of those scoring at least ``score_threshold``;
    missing ones have label -1, score 0 and box 0. Computed without grad."""
    with torch.no_grad():
        boxes = xyxy(decoded)  # (N, A, 4)
        probabilities = decoded[:, 4:]
        best, labels = probabilities.max(dim=1)  # (N, A)
        floor = max(float(confidence), float(score_threshold))
        alive = torch.where(best >= floor, best, torch.full_like(best, -1.0))
        anchors = torch.arange(boxes.shape[1], device=decoded.device)
        out_boxes, out_scores, out_labels = [], [], []
        for _ in range(k):  # unrolled: k greedy NMS steps
            score, index = alive.max(dim=1)  # (N,)
            chosen = (anchors[None, :] == index[:, None]).to(boxes.dtype)  # (N, A)
            box = torch.bmm(chosen[:, None, :], boxes)[:, 0]  # (N, 4)
            label = (labels * chosen.to(labels.dtype)).sum(dim=1)  # (N,)
            found = score >= floor
            out_boxes.append(torch.where(found[:, None], box, torch.zeros_like(box)))
            out_scores.append(torch.where(found, score, torch.zeros_like(score)))
            out_labels.append(torch.where(found, label, torch.full_like(label, -1)))
            overlap = paired_iou(box[:, None, :], boxes)  # (N, A)
            suppressed = ((overlap > nms_iou) & (labels == label[:, None])) | (chosen > 0)
            alive = torch.where(suppressed, torch.full_like(alive, -1.0), alive)
        return torch.stack(out_boxes, 1), torch.stack(out_scores, 1), torch.stack(out_labels, 1)


def box_scores(box: Tensor, probability: Tensor, ref_boxes: Tensor, ref_labels: Tensor, eligible: Tensor,
               iou_threshold: float) -> tuple[Tensor, Tensor]:
    """``(scores, matched)`` of reference boxes ``(..., 4)`` / labels ``(...)`` against their matched anchors'
    boxes ``box`` ``(..., 4)`` and probabilities of the reference's label ``(...)``: ``IoU + probability``
    where the IoU exceeds ``iou_threshold`` (and ``eligible``: an anchor was found), else 0; at the
    detection's own box (IoU within PERFECT_MATCH of 1) the IoU term adds no gradient, as box_score."""
    iou = paired_iou(ref_boxes.to(box), box)
    iou = torch.where(iou.detach() >= 1.0 - PERFECT_MATCH, iou.detach(), iou)
    matched = (iou.detach() > iou_threshold) & (ref_labels >= 0) & eligible
    return torch.where(matched, iou + probability, torch.zeros_like(iou)), matched


def matched_anchors(decoded: Tensor, ref_boxes: Tensor, ref_labels: Tensor, confidence: float) -> tuple[Tensor, Tensor]:
    """``(anchor (N, K) int64, found (N, K) bool)``: for each reference box, the anchor of its label with
    confidence >= ``confidence`` whose box overlaps it most (``found``: there is one). Without grad."""
    with torch.no_grad():
        boxes = xyxy(decoded)
        best, labels = decoded[:, 4:].max(dim=1)  # (N, A)
        overlap = paired_iou(ref_boxes[:, :, None, :].to(boxes), boxes[:, None, :, :])  # (N, K, A)
        eligible = (labels[:, None, :] == ref_labels[:, :, None]) & (best[:, None, :] >= confidence)
        overlap = torch.where(eligible, overlap, torch.full_like(overlap, -1.0))
        return overlap.argmax(dim=2), overlap.amax(dim=2) > -1.0


def scores_at(decoded: Tensor, anchor: Tensor, has_anchor: Tensor, ref_boxes: Tensor, ref_labels: Tensor,
              iou_threshold: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(scores (N, K), boxes (N, K, 4), probabilities (N, K), matched (N, K) bool)`` of reference boxes
    ``ref_boxes`` ``(N, K, 4)`` with labels ``ref_labels`` ``(N, K)`` (-1: padding, never matched) at the
    anchors :func:`matched_anchors` found (``anchor``, ``has_anchor``); see the module docstring. ``scores``
    is differentiable through ``decoded``; the rest is detached."""
    boxes = xyxy(decoded)  # (N, A, 4)
    probabilities = decoded[:, 4:]  # (N, C, A)
    with torch.no_grad():
        onehot = (torch.arange(boxes.shape[1], device=decoded.device) == anchor[..., None]).to(boxes.dtype)
    box = _pick(boxes, onehot)  # (N, K, 4), differentiable
    probability = (torch.bmm(probabilities, onehot.transpose(1, 2)) * label_onehot(ref_labels, probabilities.shape[1],
                                                                                   boxes.dtype)).sum(dim=1)  # (N, K)
    scores, matched = box_scores(box, probability, ref_boxes, ref_labels, has_anchor, iou_threshold)
    return scores, box.detach(), probability.detach(), matched


def label_onehot(labels: Tensor, classes: int, dtype: torch.dtype) -> Tensor:
    """``(N, classes, K)``: 1 where class c is ``labels[n, k]`` (labels ``(N, K)``; -1 selects none)."""
    return (torch.arange(classes, device=labels.device)[None, :, None] == labels[:, None, :]).to(dtype)
