"""What a detection explanation scores: :class:`DetectionTarget`, pytorch-grad-cam's box score."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from explainer.detection.scoring import box_score
from explainer.errors import TargetError


class DetectionTarget:
    """The score of reference boxes in a detector's output, differentiable through scores and boxes.

    For each reference box, the output box that overlaps it most (IoU) counts when the overlap exceeds
    ``iou_threshold`` and its label matches: it adds ``IoU + score``. The target's score is the sum
    over the reference boxes (0 when none matches). This is pytorch-grad-cam's
    ``FasterRCNNBoxScoreTarget``, so maps compare.

    Args:
        labels: ``(B,)`` class labels of the reference boxes (ints).
        boxes: ``(B, 4)`` reference boxes ``(x1, y1, x2, y2)`` in input-image pixels.
        iou_threshold: the least overlap that counts, in [0, 1).
        same_label: look for the most overlapping box among those with the reference's label (the
            default, False, takes the most overlapping box of any label and then requires the label to
            match, as pytorch-grad-cam does; detectors that output one box under several labels -- SSD,
            RetinaNet -- then often match nothing).
    """

    def __init__(self, labels: Sequence[int] | Tensor, boxes: Sequence[Sequence[float]] | Tensor,
                 iou_threshold: float = 0.5, same_label: bool = False) -> None:
        labels_t = torch.as_tensor(labels)
        boxes_t = torch.as_tensor(boxes, dtype=torch.float64)
        if labels_t.ndim != 1 or labels_t.dtype.is_floating_point or labels_t.dtype == torch.bool:
            raise TargetError(f"labels must be a 1-D sequence of ints, got {tuple(labels_t.shape)} {labels_t.dtype}")
        if boxes_t.ndim != 2 or boxes_t.shape[1] != 4:
            raise TargetError(f"boxes must be (B, 4) as (x1, y1, x2, y2), got shape {tuple(boxes_t.shape)}")
        if len(labels_t) != len(boxes_t):
            raise TargetError(f"got {len(labels_t)} labels for {len(boxes_t)} boxes: give one label per box")
        if not torch.isfinite(boxes_t).all() or bool((boxes_t[:, 2:] < boxes_t[:, :2]).any()):
            raise TargetError("boxes must be finite with x2 >= x1 and y2 >= y1")
        if not 0.0 <= float(iou_threshold) < 1.0:
            raise TargetError(f"iou_threshold must be in [0, 1), got {iou_threshold}")
        self.labels = labels_t.long()
        self.boxes = boxes_t
        self.iou_threshold = float(iou_threshold)
        self.same_label = bool(same_label)

    def __call__(self, detection: dict[str, Tensor]) -> Tensor:
        """The score (a 0-d tensor) of one image's detections ``{"boxes": (D, 4), "labels", "scores"}``."""
        return box_score(detection["boxes"], detection["labels"], detection["scores"], self.labels, self.boxes,
                         self.iou_threshold, self.same_label)

    def flipped(self, width: int) -> DetectionTarget:
        """The same target for images flipped horizontally (``width`` pixels wide): boxes mirrored."""
        x1, y1, x2, y2 = self.boxes.unbind(1)
        mirrored = torch.stack([width - x2, y1, width - x1, y2], dim=1)
        return DetectionTarget(self.labels, mirrored, self.iou_threshold, self.same_label)

    def __repr__(self) -> str:
        return f"DetectionTarget({len(self.boxes)} boxes, labels {self.labels.tolist()}, iou > {self.iou_threshold})"


def as_detection_targets(targets, n: int) -> tuple[list[list[DetectionTarget]], bool]:
    """``(targets per image and per explained target, whether the caller gave K per image)``.

    Accepts one :class:`DetectionTarget` (for every image), N of them (one per image), or N lists of
    K each (K targets per image, explained in one batched backward; results keep a K axis)."""
    if isinstance(targets, DetectionTarget):
        return [[targets] for _ in range(n)], False
    if isinstance(targets, (list, tuple)) and len(targets) == n and all(
            isinstance(t, (DetectionTarget, list, tuple)) for t in targets):
        nested = not all(isinstance(t, DetectionTarget) for t in targets)
        per_image = [[t] if isinstance(t, DetectionTarget) else list(t) for t in targets]
        ks = {len(t) for t in per_image}
        if all(isinstance(t, DetectionTarget) for ts in per_image for t in ts) and len(ks) == 1 and 0 not in ks:
            return per_image, nested
    raise TargetError(f"detection targets must be a DetectionTarget, {n} of them (one per image), or {n} lists "
                      "of K DetectionTargets each; got " + type(targets).__name__)
