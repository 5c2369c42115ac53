"""Run a detector explanation exported to ONNX (:mod:`export.detector_onnx`) in ONNX Runtime, OpenVINO or
OpenCV's DNN module: ``export.load("explain.onnx", runtime=...)`` returns a :class:`OnnxDetectionRuntime`.

    rt = export.load("yolo_explain.onnx")                 # targets="detections" graph
    found = rt.explain_detections(images)                 # per image: ExplainedDetection(box, label, score, cam)
    out = export.load("yolo_boxes.onnx")(images, ref_boxes, ref_labels)   # targets="boxes": dict of outputs

Images are ``(N, 3, H, W)`` float32 in [0, 1] at the graph's size (letterboxed); results are CPU tensors.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np
import torch
from torch import Tensor

from explainer.errors import ExportError, InputError
from export.detector_onnx import METADATA_KEY, OUTPUTS, DetectorOnnxInfo

RUNTIMES = ("onnxruntime", "openvino", "opencv")


def detector_info(path: str) -> DetectorOnnxInfo | None:
    """The file's detector metadata, or None when it is not a detector graph (weights not loaded)."""
    import onnx

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:  # noqa: BLE001 - not ONNX: the classifier loader reports it
        return None
    meta = {p.key: p.value for p in model.metadata_props}
    text = meta.get(METADATA_KEY)
    if text is None or '"part": "detector"' not in text:
        return None
    try:
        return DetectorOnnxInfo.from_json(text)
    except (ValueError, TypeError, KeyError) as exc:
        raise ExportError(f"{path}'s deploycam metadata is damaged ({type(exc).__name__}: {exc}); export it again") \
            from exc


class OnnxDetectionRuntime:
    """A detector explanation graph run by one engine (see the module docstring).

    Attributes:
        info: the graph's :class:`~export.detector_onnx.DetectorOnnxInfo`; backend: ``"<engine>/<device>"``.
    """

    def __init__(self, path: str | os.PathLike, runtime: str = "onnxruntime", device: str = "cpu",
                 threads: int | None = None, spin: bool = True) -> None:
        path = os.fspath(path)
        if runtime not in RUNTIMES:
            raise ExportError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        info = detector_info(path)
        if info is None:
            raise ExportError(f"{path} is not a detector explanation exported by deploycam")
        self.info, self.path, self.runtime = info, path, runtime
        self._lock = threading.Lock()  # OpenVINO infer requests and cv::dnn nets are not re-entrant
        self._nets: dict[int, Any] = {}
        if runtime == "onnxruntime":
            import onnxruntime as ort

            from export.runtime import session_options

            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
            available = set(ort.get_available_providers())
            self._session = ort.InferenceSession(path, session_options(threads, spin),
                                                 providers=[p for p in providers if p in available])
            self.backend = f"onnxruntime/{'cuda' if 'CUDAExecutionProvider' in self._session.get_providers() else 'cpu'}"
        elif runtime == "openvino":
            if info.batch is not None:
                raise ExportError("runtime='openvino' computes wrong maps for a detector graph exported from an ONNX "
                                  "file (fixed shapes; its boxes are right, its maps are not, measured): run it in "
                                  "onnxruntime or opencv, or export from the PyTorch model for OpenVINO")
            try:
                import openvino as ov
            except ImportError as exc:
                raise ExportError("runtime='openvino' needs OpenVINO: pip install 'deploycam[openvino]'") from exc
            core = ov.Core()
            name = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU"}.get(device.lower(), device)
            try:
                self._compiled = core.compile_model(core.read_model(path), name, {"INFERENCE_PRECISION_HINT": "f32"})
            except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError with C++ text
                raise ExportError(f"OpenVINO cannot compile {path}: {str(exc).strip().splitlines()[0][:300]}") from exc
            self._request = self._compiled.create_infer_request()
            self.backend = f"openvino/{name}"
        else:
            import cv2

            from export.opencv_dnn import new_engine

            engine = new_engine(cv2)
            if device != "cpu":
                raise ExportError(f"OpenCV's new DNN engine runs on the CPU only; got device={device!r}")
            self._read = lambda: cv2.dnn.readNetFromONNX(path, engine)
            try:
                self._net_for(1)
            except cv2.error as exc:
                raise ExportError(f"OpenCV's DNN engine cannot load {path}: "
                                  f"{str(exc).strip().splitlines()[-1][:300]}") from exc
            self.backend = "opencv/cpu"

    def _net_for(self, batch: int) -> Any:
        """One network per batch size (the new engine fixes its shapes at the first forward)."""
        if batch not in self._nets:
            if len(self._nets) >= 4:
                self._nets.pop(next(iter(self._nets)))
            self._nets[batch] = self._read()
        return self._nets[batch]

    def _check(self, images: Tensor | np.ndarray, ref_boxes: Any, ref_labels: Any) -> dict[str, np.ndarray]:
        x = images.detach().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
        h, w = self.info.image_size
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != (h, w):
            raise InputError(f"this graph takes images (N, 3, {h}, {w}) (letterboxed to {h}x{w}); got "
                             f"{tuple(x.shape)}")
        if x.dtype != np.float32:
            raise InputError(f"images must be float32 in [0, 1], got {x.dtype}")
        feed = {"images": np.ascontiguousarray(x)}
        if self.info.targets == "boxes":
            if ref_boxes is None or ref_labels is None:
                raise InputError("this graph explains given boxes: pass ref_boxes (N, K, 4) and ref_labels (N, K)")
            boxes = np.asarray(ref_boxes.cpu() if isinstance(ref_boxes, Tensor) else ref_boxes, np.float32)
            labels = np.asarray(ref_labels.cpu() if isinstance(ref_labels, Tensor) else ref_labels, np.int64)
            n = x.shape[0]
            if boxes.ndim != 3 or boxes.shape[0] != n or boxes.shape[2] != 4 or labels.shape != boxes.shape[:2] \
                    or boxes.shape[1] < 1:
                raise InputError(f"ref_boxes must be (N, K, 4) and ref_labels (N, K) for N={n} images, K >= 1; got "
                                 f"{tuple(boxes.shape)} and {tuple(labels.shape)}")
            feed["ref_boxes"], feed["ref_labels"] = np.ascontiguousarray(boxes), np.ascontiguousarray(labels)
        elif ref_boxes is not None or ref_labels is not None:
            raise InputError(f"this graph explains its own {self.info.max_boxes} best detections; it takes no "
                             "boxes (export with targets='boxes' for that)")
        return feed

    def __call__(self, images: Tensor | np.ndarray, ref_boxes: Tensor | np.ndarray | None = None,
                 ref_labels: Tensor | np.ndarray | None = None) -> dict[str, Tensor]:
        """The graph's outputs: ``boxes (N, K, 4)``, ``scores (N, K)``, ``labels (N, K)`` (-1: no detection,
        or no anchor matched the reference) and ``cams (N, K, H, W)`` in [0, 1]."""
        feed = self._check(images, ref_boxes, ref_labels)
        if len(feed["images"]) == 0:
            raise InputError("an empty batch: give at least one image")
        if self.info.batch is None:
            return self._run(feed)
        return self._run_fixed(feed)

    def _run_fixed(self, feed: dict[str, np.ndarray]) -> dict[str, Tensor]:
        """A graph of fixed shapes: the images in chunks of its batch (the last padded with copies of its
        last image), fewer boxes than its K padded with label -1; the padding cut from the outputs."""
        fixed, n = int(self.info.batch or 1), len(feed["images"])
        k = None
        if "ref_boxes" in feed:
            k, wanted = feed["ref_boxes"].shape[1], int(self.info.boxes or 0)
            if k > wanted:
                raise InputError(f"this graph (exported from an ONNX file, at fixed shapes) explains at most {wanted} "
                                 f"boxes per image; got {k}: export again with max_boxes={k} or more")
            feed["ref_boxes"] = np.concatenate([feed["ref_boxes"], np.zeros((n, wanted - k, 4), np.float32)], 1)
            feed["ref_labels"] = np.concatenate([feed["ref_labels"], np.full((n, wanted - k), -1, np.int64)], 1)
        parts: list[dict[str, Tensor]] = []
        for start in range(0, n, fixed):
            chunk = {name: value[start:start + fixed] for name, value in feed.items()}
            taken = len(chunk["images"])
            if taken < fixed:
                chunk = {name: np.concatenate([value, np.repeat(value[-1:], fixed - taken, 0)])
                         for name, value in chunk.items()}
            parts.append({name: value[:taken] for name, value in self._run(chunk).items()})
        out = {name: torch.cat([p[name] for p in parts]) for name in OUTPUTS}
        if k is not None:
            out = {name: value[:, :k] for name, value in out.items()}
        return out

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, Tensor]:
        with self._lock:
            if self.runtime == "onnxruntime":
                out = self._session.run(OUTPUTS, feed)
            elif self.runtime == "openvino":
                result = self._request.infer(feed)
                out = [result[self._compiled.output(name)].copy() for name in OUTPUTS]
            else:
                net = self._net_for(len(feed["images"]))
                for name, value in feed.items():
                    net.setInput(value, name)
                out = list(net.forward(OUTPUTS))
        results = {name: torch.from_numpy(np.asarray(value)) for name, value in zip(OUTPUTS, out)}
        results["labels"] = results["labels"].long()
        return results

    def explain_detections(self, images: Tensor | np.ndarray) -> list[list[Any]]:
        """Per image, its detections (best first, at most ``info.max_boxes``, scoring at least
        ``info.score_threshold``) with maps: :class:`~explainer.detection.ExplainedDetection` as the eager
        explainer's ``explain_detections`` returns."""
        from explainer.detection.explainer import ExplainedDetection

        if self.info.targets != "detections":
            raise InputError("this graph explains given boxes (targets='boxes'): call it with ref_boxes and ref_labels")
        out = self(images)
        found = []
        for boxes, scores, labels, cams in zip(out["boxes"], out["scores"], out["labels"], out["cams"]):
            found.append([ExplainedDetection(boxes[j], int(labels[j]), float(scores[j]), cams[j])
                          for j in range(len(labels)) if int(labels[j]) >= 0])
        return found

    def __repr__(self) -> str:
        return (f"OnnxDetectionRuntime({self.info.method} at {len(self.info.layers)} levels of {self.info.detector}, "
                f"targets={self.info.targets!r}, {self.backend})")
