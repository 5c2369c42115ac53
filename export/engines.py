"""Exported ONNX explanations run by OpenVINO or OpenCV's DNN module: ``export.load(path, runtime=...)``.

Both take the same file ONNX Runtime does and return the same :class:`~explainer.Explanation`.
OpenVINO compiles with ``INFERENCE_PRECISION_HINT=f32`` (its CPU default is bf16 on processors that
have it: ~1e-2 off); OpenCV uses its 5.x new engine (the classic one loads none of these graphs;
:mod:`export.opencv_dnn` finds it on each OpenCV release).
Engines have bugs a file cannot always route around, so each runtime checks itself when it opens
a file: a random batch through the engine and through ONNX Runtime (when installed); if logits or
maps differ, :class:`ExportError` says so and names the runtimes that work, instead of later calls
returning wrong maps.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from torch import Tensor

from explainer.errors import ExportError
from explainer.tracing_lock import running
from export.parts import GraphInfo
from export.runtime import GraphRuntime

#: largest max |cam - ONNX Runtime| (maps in [0, 1]) and relative logit error the self-check accepts
CHECK_CAM_TOLERANCE = 1e-3
CHECK_LOGIT_TOLERANCE = 1e-3


def graph_info(path: str) -> GraphInfo:
    """The deploycam metadata of an exported ONNX file (weights not loaded)."""
    import onnx

    from export.onnx_graph import METADATA_KEY

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf decode errors vary
        raise ExportError(f"{path} is not an ONNX model: {exc}") from exc
    meta = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in meta:
        raise ExportError(f"{path} is an ONNX model but not one exported by deploycam (no '{METADATA_KEY}' metadata)")
    return GraphInfo.from_json(meta[METADATA_KEY])


class _EngineRuntime(GraphRuntime):
    """The input/target feeding and the self-check shared by the engines; ``_call(inputs) -> (logits, cam)``."""

    engine = ""

    def __init__(self, path: str, verify: bool) -> None:
        self.path = path
        self.info = graph_info(path)
        self._lock = threading.Lock()  # engine handles (an infer request, a cv::dnn::Net) are not re-entrant
        if verify:
            self._verify()

    def _call(self, x: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _run(self, x: Tensor, target: Tensor | None) -> tuple[Tensor, Tensor]:
        t = (np.full(x.shape[0], -1, dtype=np.int64) if target is None
             else target.cpu().numpy().astype(np.int64))
        with self._lock, running():
            logits, cam = self._call(np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32), t)
        return torch.from_numpy(np.array(logits)), torch.from_numpy(np.array(cam))

    def _verify(self) -> None:
        """Compare with ONNX Runtime on a random batch (skipped when onnxruntime is missing)."""
        try:
            import onnxruntime as ort
        except ImportError:
            return
        shape = self.info.input_shape
        x = np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32)
        target = np.array([-1, 0], dtype=np.int64)
        session = ort.InferenceSession(self.path, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x, "target": target}
        expected_logits, expected_cam = session.run(["logits", "cam"], feed)
        try:
            logits, cam = self._call(x, target)
        except Exception as exc:  # noqa: BLE001 - engines raise their own types
            raise ExportError(f"{self.engine} cannot run {self.path}: {type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}; "
                              "use runtime='onnxruntime'") from exc
        cam_diff = float(np.abs(np.asarray(cam) - expected_cam).max())
        logit_diff = float(np.abs(np.asarray(logits) - expected_logits).max() / (np.abs(expected_logits).max() + 1e-12))
        if not cam_diff <= CHECK_CAM_TOLERANCE or not logit_diff <= CHECK_LOGIT_TOLERANCE:
            raise ExportError(
                f"{self.engine} computes {self.path} wrongly: on a random batch its maps differ from ONNX Runtime's "
                f"by {cam_diff:.2e} and its logits by {logit_diff:.2e} (relative); an engine bug for an operator "
                f"pattern in this graph ({self.info.method} at {self.info.layer}). Run it with runtime='onnxruntime'"
                f"{' or runtime=' + repr('openvino') if self.engine != 'OpenVINO' else ''}, or export another layer")


class OpenVinoExplainer(_EngineRuntime):
    """An ``.onnx`` explanation compiled by OpenVINO (float32 precision)."""

    engine = "OpenVINO"

    def __init__(self, path: str, device: str = "cpu", verify: bool = True) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise ExportError("runtime='openvino' needs OpenVINO: pip install 'deploycam[openvino]'") from exc
        core = ov.Core()
        name = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU"}.get(device.lower(), device)
        available = core.available_devices
        if name.split(".")[0] not in {d.split(".")[0] for d in available}:
            raise ExportError(f"OpenVINO has no device {device!r} here; available: {', '.join(available)}")
        try:
            self.compiled = core.compile_model(core.read_model(path), name, {"INFERENCE_PRECISION_HINT": "f32"})
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError with C++ text
            raise ExportError(f"OpenVINO cannot compile {path}: {str(exc).strip().splitlines()[0][:300]}") from exc
        self._request = self.compiled.create_infer_request()
        self._names = [i.get_any_name() for i in self.compiled.inputs]
        self.device = name
        self.backend = f"openvino/{name}"
        super().__init__(path, verify)

    def _call(self, x: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feed = {self._names[0]: x}
        if "target" in self._names:
            feed["target"] = target
        result = self._request.infer(feed)
        return result[self.compiled.output("logits")].copy(), result[self.compiled.output("cam")].copy()


class OpenCvExplainer(_EngineRuntime):
    """An ``.onnx`` explanation run by OpenCV's DNN module (its 5.x new engine, CPU)."""

    engine = "OpenCV DNN"

    def __init__(self, path: str, device: str = "cpu", verify: bool = True) -> None:
        import cv2

        from export.opencv_dnn import new_engine

        engine = new_engine(cv2)  # ExportError for an OpenCV without the graph engine, naming what is supported
        if device != "cpu":
            raise ExportError(f"OpenCV's new DNN engine runs on the CPU only; got device={device!r}")
        self._nets: OrderedDict[int, Any] = OrderedDict()
        self._read = lambda: cv2.dnn.readNetFromONNX(path, engine)
        try:
            self._net_for(1)
        except cv2.error as exc:
            raise ExportError(f"OpenCV's DNN engine cannot load {path}: {str(exc).strip().splitlines()[-1][:300]}") from exc
        self.device = "cpu"
        self.backend = "opencv/cpu"
        super().__init__(path, verify)

    def _net_for(self, batch: int) -> Any:
        """A network for this batch size: the new engine fixes its layers' shapes at the first forward
        (an Einsum then refuses another batch), so each batch size gets its own (the last 4 kept)."""
        if batch not in self._nets:
            self._nets[batch] = self._read()
            while len(self._nets) > 4:
                self._nets.popitem(last=False)
        self._nets.move_to_end(batch)
        return self._nets[batch]

    def _call(self, x: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        net = self._net_for(x.shape[0])
        net.setInput(x, "input" if self.info.part == "full" else "activations")
        net.setInput(target, "target")
        logits, cam = net.forward(["logits", "cam"])
        return logits, cam
