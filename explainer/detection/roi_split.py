"""K boxes' gradients of a two-stage (R-CNN) detector without a backward through its whole box head.

A Faster R-CNN detection is one (RoI, class) pair of the box head's output: its score is the softmax of
that RoI's class logits, its box that RoI's regression decoded against the proposal. The proposals come
from the RPN *detached* (torchvision's ``RegionProposalNetwork`` decodes ``pred_bbox_deltas.detach()``),
so a detection depends on the feature maps through one path only: ``MultiScaleRoIAlign`` of its own RoI,
then the box head (``TwoMLPHead`` / ``FastRCNNConvFCHead``: every RoI on its own), then the predictor.

So :func:`rcnn_forward` runs the RPN and the box head on all (typically 1,000) RoIs *without* grad --
plain inference -- and makes the head's outputs ``(class_logits, box_regression)`` the leaves the
detections are differentiated from (torchvision's own ``postprocess_detections`` and rescaling, with
grad). :func:`rcnn_gradients` then finds, from one batched backward through those few operations, which
RoIs each target reads and with which output gradient, re-runs RoIAlign + box head + predictor on only
those RoIs (one batch: each target's RoIs pool from its own copy of the maps), and backpropagates once.
Exact -- the same function of the same inputs -- and about the price of inference for K boxes (README).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from explainer.detection.anchor_split import candidate_reads


@dataclass
class RoiState:
    """What :func:`rcnn_gradients` needs of one :func:`rcnn_forward` run.

    Attributes:
        logits: ``(R, classes)`` class logits of every RoI of the batch (a leaf), images in order.
        regression: ``(R, 4 * classes)`` their box regression (a leaf).
        proposals: per image its RoIs ``(R_i, 4)`` in canvas pixels (detached, from the RPN).
        features: the detector's feature maps by name (``"0"``, ..., ``"pool"``), each ``(N, C, h, w)``, detached.
    """

    logits: Tensor
    regression: Tensor
    proposals: list[Tensor]
    features: OrderedDict[str, Tensor]


def supports(model: nn.Module) -> bool:
    """True when a detector's detections read the maps only through per-RoI box-head paths: torchvision's
    ``RoIHeads`` with a ``TwoMLPHead`` or ``FastRCNNConvFCHead`` box head and no mask or keypoint branch
    (Mask / Keypoint R-CNN keep the whole-head backward: their outputs have more than boxes)."""
    from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, TwoMLPHead

    heads: Any = getattr(model, "roi_heads", None)
    if heads is None or not hasattr(model, "rpn") or not hasattr(heads, "box_roi_pool"):
        return False
    if heads.has_mask() or heads.has_keypoint():
        return False
    return type(heads.box_head) in (TwoMLPHead, FastRCNNConvFCHead) and not heads.box_head.training


def rcnn_forward(model: Any, canvas: Tensor, image_sizes: list[tuple[int, int]], original_sizes: list[tuple[int, int]],
                 features: OrderedDict[str, Tensor]) -> tuple[list[dict[str, Tensor]], RoiState]:
    """The detector's output from its feature maps, as its own forward computes it (RPN, RoI heads,
    ``postprocess_detections``, the transform's rescaling to ``original_sizes``), the heads run without
    grad: per image ``{"boxes" (D, 4), "scores" (D,), "labels" (D,)}``, differentiable from the state's
    ``logits`` and ``regression`` leaves."""
    from torchvision.models.detection.image_list import ImageList

    heads = model.roi_heads
    with torch.no_grad():
        features = OrderedDict((name, f.detach()) for name, f in features.items())
        proposals, _ = model.rpn(ImageList(canvas, image_sizes), features)
        pooled = heads.box_roi_pool(features, proposals, image_sizes)
        logits, regression = heads.box_predictor(heads.box_head(pooled))
    logits, regression = logits.detach().requires_grad_(True), regression.detach().requires_grad_(True)
    with torch.enable_grad():
        boxes, scores, labels = heads.postprocess_detections(logits, regression, proposals, image_sizes)
        detections = [{"boxes": b, "labels": lab, "scores": s} for b, s, lab in zip(boxes, scores, labels)]
        detections = model.transform.postprocess(detections, image_sizes, original_sizes)
    return detections, RoiState(logits, regression, [p.detach() for p in proposals], features)


def rcnn_gradients(model: Any, scores: Tensor, state: RoiState, names: list[str],
                   image_sizes: list[tuple[int, int]]) -> list[Tensor]:
    """``d scores[n, k] / d features[name][n]`` for each of ``names``, ``(N, K, C, h, w)`` each (module docstring).

    Args:
        scores: ``(N, K)`` target scores, differentiable through ``state.logits`` and ``state.regression``.
        names: the explained maps' names in ``state.features``.
    """
    n, k = scores.shape
    heads = model.roi_heads
    logits_reads, regression_reads = candidate_reads(scores, [state.logits, state.regression])  # (K, R, ...)
    rois = torch.cat(state.proposals)
    image_of = torch.cat([torch.full((len(p),), i, dtype=torch.long, device=rois.device)
                          for i, p in enumerate(state.proposals)])  # (R,) the image each RoI belongs to
    # the (target, RoI) pairs a backward must cross: RoIs whose outputs a target's score reads
    used = (logits_reads.abs().sum(dim=2) + regression_reads.abs().sum(dim=2)) != 0  # (K, R)
    out = [state.features[name].new_zeros(n, k, *state.features[name].shape[1:]) for name in names]
    if not bool(used.any()):
        return out
    slots: list[Tensor] = []  # slot n * K + j: the RoIs target j of image n reads, pooled from its own maps
    seeds_logits, seeds_regression = [], []
    for i in range(n):
        in_image = image_of == i
        for j in range(k):
            chosen = torch.nonzero(used[j] & in_image).squeeze(1)
            slots.append(rois[chosen])
            seeds_logits.append(logits_reads[j, chosen])
            seeds_regression.append(regression_reads[j, chosen])
    slot_image = torch.arange(n, device=rois.device).repeat_interleave(k)
    pooled_names = set(heads.box_roi_pool.featmap_names)  # the maps RoIAlign reads (not the RPN's extra levels)
    copies = OrderedDict((name, f[slot_image].requires_grad_(name in names)) for name, f in state.features.items()
                         if name in pooled_names)
    with torch.enable_grad():
        pooled = heads.box_roi_pool(copies, slots, [image_sizes[i] for i in slot_image.tolist()])
        logits, regression = heads.box_predictor(heads.box_head(pooled))
    explained = [position for position, name in enumerate(names) if name in copies]
    grads = torch.autograd.grad((logits, regression), [copies[names[p]] for p in explained],
                                grad_outputs=(torch.cat(seeds_logits), torch.cat(seeds_regression)), allow_unused=True)
    for position, g in zip(explained, grads):
        if g is not None:
            out[position] = g.reshape(n, k, *g.shape[1:])
    return out
