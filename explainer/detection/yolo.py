"""Ultralytics YOLO detectors (YOLOv8, YOLO11: ``DetectionModel`` with a ``Detect`` head) split at the
head's input maps without hooks.

``prepare(images)`` runs the model's own layer loop (what ``DetectionModel._predict_once`` does: each
layer reads the outputs its ``f`` index names) under ``torch.no_grad()`` up to the ``Detect`` head, whose
inputs -- the neck's P3/P4/P5 maps (strides 8, 16, 32) -- are the target maps. ``detect(prepared, maps)``
runs the head itself on the given maps (differentiable): box regression (DFL) and class scores decoded by
ultralytics' own ``Detect`` code into ``(N, 4 + classes, anchors)``, then deploycam's confidence filter and
class-aware NMS (torchvision's ``nms`` with classes shifted apart; ultralytics' defaults: confidence 0.25,
IoU 0.7, 300 boxes) pick the detections, whose boxes (``x1, y1, x2, y2`` in input pixels) and scores stay
differentiable. Each detection also says which anchor (cell of which level) produced it.

The head is run on a shallow copy per call: ``Detect`` caches its anchors on itself when the input size
changes, and the model object is never changed. Images are ``(N, 3, H, W)`` in [0, 1] (RGB) with H and W
multiples of the model's largest stride (32): :func:`letterbox` makes them from a picture, as
ultralytics' predictor does, and maps boxes back.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import nms

from explainer.detection.anchor_split import crop_gradients, receptive_radius, split_gradients
from explainer.detection.anchor_targets import corners
from explainer.detection.parts import Prepared, concatenated_levels, selected_levels
from explainer.errors import InputError, ModelOutputError

#: ultralytics' predictor defaults
CONFIDENCE = 0.25
NMS_IOU = 0.7
MAX_DETECTIONS = 300
LETTERBOX_SIZE = 640
PAD_VALUE = 114


def is_yolo(model: nn.Module) -> bool:
    """True for an ultralytics ``DetectionModel`` (or a model object of the same shape) ending in a ``Detect`` head."""
    layers = getattr(model, "model", None)
    if not isinstance(layers, nn.Sequential) or len(layers) == 0:
        return False
    head = layers[-1]
    return any(t.__name__ == "Detect" for t in type(head).__mro__) and hasattr(head, "f") and hasattr(model, "save")


def unwrap(model: Any) -> Any:
    """``ultralytics.YOLO`` objects hold the ``DetectionModel`` as ``.model``; anything else as it is."""
    inner = getattr(model, "model", None)
    if type(model).__name__ in ("YOLO", "Model") and isinstance(inner, nn.Module) and is_yolo(inner):
        return inner
    return model


class YoloParts:
    """Backbone + neck (no grad) and ``Detect`` head (differentiable) of an ultralytics detector."""

    def __init__(self, model: Any, confidence: float = CONFIDENCE, iou: float = NMS_IOU,
                 max_detections: int = MAX_DETECTIONS) -> None:
        if not is_yolo(model):
            raise ModelOutputError(f"{type(model).__name__} is not an ultralytics DetectionModel with a Detect head")
        head: Any = model.model[-1]
        if getattr(head, "end2end", False):
            raise ModelOutputError(f"{type(head).__name__} is an end-to-end (NMS-free) head; deploycam explains "
                                   "the one-to-many Detect head of YOLOv8 / YOLO11 (end2end=False)")
        for name, value in (("confidence", confidence), ("iou", iou)):
            if not 0.0 <= float(value) <= 1.0:
                raise InputError(f"{name} must be in [0, 1], got {value}")
        self.model: Any = model  # ultralytics' DetectionModel: .model (layers), .save, .stride
        self.head: Any = head
        self.confidence, self.iou, self.max_detections = float(confidence), float(iou), int(max_detections)
        self.inputs = [head.f] if isinstance(head.f, int) else list(head.f)  # the layers feeding the head
        self.stride = int(max(float(s) for s in model.stride)) if hasattr(model, "stride") else 32
        self.num_classes: int | None = int(head.nc)
        #: the head's receptive radius in cells (None: unknown, one backward per target)
        self.radius = receptive_radius([*head.cv2, *head.cv3]) if hasattr(head, "cv2") and hasattr(head, "cv3") \
            else None

    def target_names(self) -> list[str]:
        """The explainable maps: the head's inputs, ``model.<layer index>`` (P3, P4, P5)."""
        return [f"model.{i}" for i in self.inputs]

    def prepare(self, images: Tensor) -> Prepared:
        """The model's layer loop under no_grad up to the head; the head's inputs are the target maps."""
        h, w = images.shape[-2:]
        if h % self.stride or w % self.stride:
            raise InputError(f"YOLO input sides must be multiples of the model's stride {self.stride}; got {h}x{w}: "
                             "letterbox the picture first (explainer.detection.letterbox)")
        with torch.no_grad():
            maps = self.level_maps(images)
        return Prepared(images, images, [(h, w)] * len(images), maps, self.target_names(), [])

    def level_maps(self, images: Tensor) -> list[Tensor]:
        """The head's input maps ``[(N, C_l, H / s_l, W / s_l)]`` (P3, P4, P5) of ``images`` ``(N, 3, H, W)``:
        the model's layer loop up to the head, in the caller's grad mode (traceable: no size is read)."""
        outputs: list[Tensor | None] = []
        x: Any = images
        for layer in self.model.model:
            if layer.f != -1:
                x = outputs[layer.f] if isinstance(layer.f, int) else [x if j == -1 else outputs[j] for j in layer.f]
            if layer is self.head:
                break
            x = layer(x)
            outputs.append(x if layer.i in self.model.save or layer.i in self.inputs else None)
        return list(x) if isinstance(x, list) else [x]

    def decoded(self, maps: list[Tensor]) -> Tensor:
        """The head's decoded output ``(N, 4 + classes, anchors)``: ``cx, cy, w, h`` in input pixels, then each
        class's probability (ultralytics' own decoding, on a shallow copy of the head)."""
        head = copy.copy(self.head)  # Detect caches anchors/strides on itself: on the copy, not the model
        head.training = False
        head.shape = None  # anchors made afresh (cheap): comparing a cached shape would pin a traced graph's sizes
        out = head(list(maps))
        return out[0] if isinstance(out, (tuple, list)) else out

    def detect(self, prepared: Prepared, maps: list[Tensor]) -> list[dict[str, Tensor]]:
        """Per image ``{"boxes" (D, 4) x1y1x2y2, "scores" (D,), "labels" (D,), "anchors" (D,)}`` after the
        confidence filter and class-aware NMS, best first; boxes and scores differentiable from ``maps``."""
        return self.detect_decoded(prepared, maps)[0]

    def detect_decoded(self, prepared: Prepared, maps: list[Tensor]) -> tuple[list[dict[str, Tensor]], Tensor]:
        """:meth:`detect` and the head's decoded output ``(N, 4 + classes, anchors)`` the detections read."""
        y = self.decoded(maps)
        return self.from_decoded(y), y

    def from_decoded(self, y: Tensor) -> list[dict[str, Tensor]]:
        """:meth:`detect`'s detections from the head's decoded output ``y`` ``(N, 4 + classes, anchors)``
        (boxes and scores differentiable from ``y``)."""
        return self.from_candidates(self.candidates(y))

    def candidates(self, y: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per image, the anchors whose best class probability passes the confidence filter:
        ``(y[i][:, anchors] (4 + classes, M), anchors (M,))``."""
        out = []
        for row in y:  # (4 + classes, anchors)
            keep = torch.nonzero(row[4:].detach().amax(dim=0) >= self.confidence).squeeze(1)
            out.append((row[:, keep], keep))
        return out

    def from_candidates(self, candidates: list[tuple[Tensor, Tensor]], suppress: bool = True) -> list[dict[str, Tensor]]:
        """Detections (class-aware NMS, best first) from :meth:`candidates`; boxes and scores differentiable
        from the candidates' outputs. ``suppress=False``: the candidates are already the detections, in order."""
        results = []
        for outputs, keep in candidates:
            xywh, probabilities = outputs[:4].T, outputs[4:].T
            scores, labels = probabilities.max(dim=1)
            boxes = corners(xywh)
            if suppress:
                precision = torch.float32 if boxes.dtype in (torch.float16, torch.bfloat16) else boxes.dtype
                chosen = _class_aware_nms(boxes.detach().to(precision), scores.detach().to(precision), labels,
                                          self.iou)[: self.max_detections]
            else:
                chosen = torch.arange(len(keep), device=keep.device)
            results.append({"boxes": boxes[chosen], "scores": scores[chosen], "labels": labels[chosen],
                            "anchors": keep[chosen]})
        return results

    #: gradients from the head re-run on crops around the anchors each score reads
    #: (:func:`~explainer.detection.anchor_split.crop_gradients`): the head runs on any map size
    crops = True

    def splits(self, k: int) -> bool:
        """Whether K targets' gradients come from :meth:`level_gradients`: with crops always, else for K > 1
        (a few whole-head backwards); never where the head's locality is unknown."""
        return self.radius is not None and (k > 1 or self.crops)

    def split_forward(self, prepared: Prepared, maps: list[Tensor]) -> tuple[list[dict[str, Tensor]], Any] | None:
        """With crops: the head run without grad and the detections differentiable from their own anchors'
        outputs (leaves, :meth:`candidates`-shaped), which :meth:`level_gradients` reads; else None."""
        if not (self.crops and self.radius is not None):
            return None
        with torch.no_grad():  # the detections' own anchors' outputs become the leaves
            decoded = self.decoded(maps)
            kept = [d["anchors"] for d in self.from_decoded(decoded)]
        candidates = [(row[:, anchors].detach().requires_grad_(True), anchors) for row, anchors in zip(decoded, kept)]
        with torch.enable_grad():
            return self.from_candidates(candidates, suppress=False), candidates

    def level_gradients(self, scores: Tensor, decoded: Tensor | list[tuple[Tensor, Tensor]], leaves: list[Tensor],
                        levels: list[int], prepared: Prepared) -> list[Tensor] | None:
        """K targets' gradients ``(N, K, C, h, w)`` per leaf: from the head re-run on crops
        (:func:`~explainer.detection.anchor_split.crop_gradients`; ``decoded`` is then the detections' anchors'
        outputs as leaves, :meth:`candidates`-shaped, the head having run without grad), or else from a few
        whole-head backwards (:func:`~explainer.detection.anchor_split.split_gradients`; ``decoded``: the
        head's output); None where the head's locality is unknown."""
        if self.radius is None:
            return None
        if self.crops:
            assert isinstance(decoded, list)
            return crop_gradients(scores, decoded, prepared.maps, levels, self.radius, self.decoded)
        assert isinstance(decoded, Tensor)
        sizes = [(int(m.shape[-2]), int(m.shape[-1])) for m in prepared.maps]
        return split_gradients(scores, decoded, leaves, levels, sizes, self.radius)

    def concatenated(self, prepared: Prepared) -> Tensor:
        """The head's input maps, ``|x|`` resized bilinearly to the coarsest and concatenated on channels
        ``(N, sum C_l, h, w)`` (what pytorch-grad-cam's YOLO examples feed EigenCAM), without grad."""
        with torch.no_grad():
            return concatenated_levels(prepared.maps)

    def level_names(self, prepared: Prepared, levels: list[int]) -> list[str]:
        return [prepared.names[i] for i in levels]

    def selected(self, prepared: Prepared, levels: list[int] | None) -> list[int]:
        return selected_levels(prepared, levels)


def _class_aware_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou: float) -> Tensor:
    """torchvision's ``batched_nms`` by its coordinate trick (each class's boxes shifted apart, one ``nms``),
    which ``batched_nms`` itself skips on the CPU above 1,000 boxes for a loop over classes (measured 15 ms
    of YOLOv8n's 100 ms at 640 px with ~6,000 candidate boxes). Same kept boxes, best first."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    offsets = labels.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou)


@dataclass(frozen=True)
class Letterbox:
    """How a picture became a letterboxed input: scaled by ``gain``, then ``pad`` (left, top) pixels of
    grey added; ``size`` is the original ``(height, width)``."""

    gain: float
    pad: tuple[int, int]
    size: tuple[int, int]

    def boxes_to_original(self, boxes: Tensor) -> Tensor:
        """``(B, 4)`` x1y1x2y2 boxes in input pixels -> in the original picture's pixels (clipped to it)."""
        left, top = self.pad
        shift = boxes.new_tensor([left, top, left, top])
        out = (boxes - shift) / self.gain
        h, w = self.size
        return torch.stack([out[:, 0].clamp(0, w), out[:, 1].clamp(0, h), out[:, 2].clamp(0, w),
                            out[:, 3].clamp(0, h)], dim=1)

    def map_to_original(self, cam: Tensor | np.ndarray) -> np.ndarray:
        """An ``(H, W)`` map of the letterboxed input -> ``(h, w)`` over the original picture (padding cut,
        resized with OpenCV's bilinear interpolation)."""
        array = cam.detach().float().cpu().numpy() if isinstance(cam, Tensor) else np.asarray(cam, np.float32)
        h, w = self.size
        left, top = self.pad
        inner_h, inner_w = round(h * self.gain), round(w * self.gain)
        crop = array[top:top + inner_h, left:left + inner_w]
        return cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)


def letterbox(picture: np.ndarray, size: int | tuple[int, int] = LETTERBOX_SIZE, stride: int = 32,
              auto: bool = False, scaleup: bool = True) -> tuple[Tensor, Letterbox]:
    """An RGB ``(h, w, 3)`` uint8 picture -> ``((3, H, W) float32 in [0, 1], Letterbox)``, as ultralytics'
    ``LetterBox``: scaled to fit ``size`` (``H = W = size``, or ``(H, W)`` -- what a fixed-size ONNX file
    takes; kept aspect ratio; ``scaleup=False`` only shrinks), padded with grey 114 to ``H x W``
    (``auto=True``: only to the next multiple of ``stride``), centred."""
    if not isinstance(picture, np.ndarray) or picture.ndim != 3 or picture.shape[2] != 3 or picture.dtype != np.uint8:
        raise InputError("letterbox takes an RGB (h, w, 3) uint8 picture (explainer.imaging.load_image gives one)")
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if height % stride or width % stride or height < 1 or width < 1:
        raise InputError(f"size must be a positive multiple of stride {stride}, got {size}")
    h, w = picture.shape[:2]
    gain = min(height / h, width / w)
    if not scaleup:
        gain = min(gain, 1.0)
    new_w, new_h = round(w * gain), round(h * gain)
    pad_w, pad_h = width - new_w, height - new_h
    if auto:
        pad_w, pad_h = pad_w % stride, pad_h % stride
    resized = cv2.resize(picture, (new_w, new_h), interpolation=cv2.INTER_LINEAR) if (new_w, new_h) != (w, h) \
        else picture
    top, left = int(round(pad_h / 2 - 0.1)), int(round(pad_w / 2 - 0.1))
    bottom, right = int(round(pad_h / 2 + 0.1)), int(round(pad_w / 2 + 0.1))
    padded = cv2.copyMakeBorder(resized, top, bottom, left, right, cv2.BORDER_CONSTANT,
                                value=(PAD_VALUE, PAD_VALUE, PAD_VALUE))
    tensor = torch.from_numpy(np.ascontiguousarray(padded)).permute(2, 0, 1).float().div(255.0)
    return tensor, Letterbox(gain, (left, top), (h, w))
