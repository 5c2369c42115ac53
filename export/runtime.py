"""Run an exported explanation (ONNX Runtime or TorchScript) like the eager explainer.

``export.load(path)`` returns a callable ``rt(x, targets=None) -> Explanation``
whatever the file's format; ``rt.backend`` says what runs it.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from explainer.checks import check_grad_mode, check_input
from explainer.errors import ExportError, InputError, TargetError
from explainer.explanation import Explanation
from explainer.scoring import Targets, check_one_of, resolve_targets, topk_targets
from explainer.targets import is_target_callable
from explainer.tracing_lock import running
from export.detection_graph import is_detector_graph
from export.detector_runtime import OnnxDetectionRuntime, detector_info
from export.graph_files import GRAPH_SUFFIXES, check_graph_path
from export.onnx_graph import METADATA_KEY
from export.ort_binding import BoundRun
from export.parts import GraphInfo
from export.torchscript import METADATA_FILE


class GraphRuntime:
    """Common input checks and result packing; subclasses run one graph call ``(x, target) -> (logits, cam)``.

    Attributes:
        info: the metadata stored in the file (part, method, layer, input shape, classes).
        backend: e.g. ``"onnxruntime/CPUExecutionProvider"`` or ``"torchscript/cpu"``.
    """

    info: GraphInfo
    backend: str
    fixed_size: bool = True

    def __call__(self, x: Tensor | np.ndarray, targets: Targets = None, *, topk: int | None = None) -> Explanation:
        """Explain a batch ``(N, C, H, W)`` (images for part "full", activations for "head"; images
        ``(N, H, W, C)`` for graphs of NHWC models, ``info.input_layout == "nhwc"``).

        ``targets`` as for :class:`explainer.Explainer` (None: argmax; int; N ints; ``(N, K)``, run K
        times); or ``topk``: each image's k best classes (one run for the scores, then k).
        ``cams`` is ``(N, H, W)`` for "full" and ``(N, h, w)`` for "head"; ``raw`` is None.
        """
        check_one_of(targets, topk)
        if is_target_callable(targets):
            raise TargetError("exported graphs explain class indices; target callables (ClassTarget, "
                              "SegmentationTarget, ...) need the eager Explainer, or pass the class ints")
        x = self._check_input(x)
        n = x.shape[0]
        if targets is None:
            logits, cam = self._run(x, None)
            if topk is None:
                return self._pack(logits, logits.argmax(dim=1), cam)
            targets = topk_targets(logits, topk)
        chosen, keep_k = resolve_targets(targets, torch.empty(n, self.info.num_classes))
        runs = [self._run(x, chosen[:, k].contiguous()) for k in range(chosen.shape[1])]
        logits = runs[0][0]
        if keep_k:
            return self._pack(logits, chosen, torch.stack([cam for _, cam in runs], dim=1))
        return self._pack(logits, chosen[:, 0], runs[0][1])

    @property
    def input_layout(self) -> str:
        """``"nchw"``, or ``"nhwc"`` for graphs of models that take ``(N, H, W, C)`` images."""
        return self.info.input_layout

    def _pack(self, logits: Tensor, targets: Tensor, cams: Tensor) -> Explanation:
        return Explanation(logits, targets.to(torch.long), None, cams, self.info.method, self.info.layer)

    def _check_input(self, x: Tensor | np.ndarray) -> Tensor:
        """The eager explainer's checks (:func:`explainer.checks.check_input`: type, rank, emptiness,
        float32, NaN/inf), then the shape the graph was exported for."""
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(x))
        check_input(x, None, torch.float32, None)
        what = "image" if self.info.part == "full" else "activations"
        if self.info.input_layout == "nhwc":  # input_shape is (H, W, C)
            h, w, c = self.info.input_shape
            channels, size = x.shape[3], tuple(x.shape[1:3])
            expected = f"(N, {h}, {w}, {c})" if self.fixed_size else f"(N, H, W, {c})"
        else:
            c, h, w = self.info.input_shape
            channels, size = x.shape[1], tuple(x.shape[2:])
            expected = f"(N, {c}, {h}, {w})" if self.fixed_size else f"(N, {c}, H, W)"
        if channels != c or (self.fixed_size and size != (h, w)):
            raise InputError(
                f"this graph was exported for {what} inputs of shape {expected}; got {tuple(x.shape)}"
                + (" (export again with an example of the new size)" if self.fixed_size else "")
            )
        return x

    def _run(self, x: Tensor, target: Tensor | None) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.info.method} at {self.info.layer}, part={self.info.part}, {self.backend})"


class OnnxRuntimeExplainer(GraphRuntime):
    """An ``.onnx`` explanation run by ONNX Runtime.

    ``io_binding``: inputs and outputs bound to torch tensors on the session's device (None: on for
    CUDAExecutionProvider, whose results then stay on the GPU as CUDA tensors); ``cuda_graph``: ONNX
    Runtime records the graph as a CUDA graph per input shape and replays it (CUDAExecutionProvider
    only). See :mod:`export.ort_binding`.
    """

    def __init__(self, path: str, device: str = "cpu", providers: Sequence[str | tuple[str, dict]] | None = None,
                 strict: bool = False, threads: int | None = None, spin: bool = True,
                 io_binding: bool | None = None, cuda_graph: bool = False) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ExportError("running .onnx files needs onnxruntime: pip install 'deploycam[onnx]' "
                              "(or 'deploycam[gpu]' for onnxruntime-gpu)") from exc
        wanted: list[str | tuple[str, dict]] = list(providers) if providers else (
            ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
        )
        available = ort.get_available_providers()
        missing = [_provider_name(p) for p in wanted if _provider_name(p) not in available]
        if missing:
            message = (f"ONNX Runtime here lacks {', '.join(missing)} (available: {', '.join(available)}); "
                       "install onnxruntime-gpu (pip install 'deploycam[gpu]') for CUDA")
            if strict:
                raise ExportError(message)
            warnings.warn(message + "; falling back to CPUExecutionProvider", RuntimeWarning, stacklevel=3)
            wanted = [p for p in wanted if _provider_name(p) in available] or ["CPUExecutionProvider"]
        if cuda_graph:
            if _provider_name(wanted[0]) != "CUDAExecutionProvider":
                raise ExportError("cuda_graph=True needs ONNX Runtime's CUDAExecutionProvider (onnxruntime-gpu and "
                                  f"device='cuda'); this session would run on {_provider_name(wanted[0])}")
            name, cuda_options = wanted[0] if isinstance(wanted[0], tuple) else (wanted[0], {})
            wanted[0] = (name, {**cuda_options, "enable_cuda_graph": "1"})
        options = session_options(threads, spin)
        try:
            self.session = ort.InferenceSession(path, sess_options=options, providers=wanted)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            if cuda_graph and "graph" in str(exc).lower():
                raise ExportError(f"ONNX Runtime cannot record {path} as a CUDA graph (every node must run on its "
                                  f"CUDA provider): {exc}; load it without cuda_graph") from exc
            raise ExportError(f"{path} is not an ONNX model ONNX Runtime can load: {exc}") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise ExportError(f"{path} is an ONNX model but not one exported by deploycam (no '{METADATA_KEY}' metadata)")
        self.info = GraphInfo.from_json(meta[METADATA_KEY])
        self.provider = self.session.get_providers()[0]
        self.backend = f"onnxruntime/{self.provider}"
        self.device = "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"
        self._input_name = self.session.get_inputs()[0].name
        self._has_target = any(i.name == "target" for i in self.session.get_inputs())
        if io_binding is None:
            io_binding = self.device == "cuda"
        bound_device = torch.device("cuda", _cuda_device_id(wanted[0])) if self.device == "cuda" else torch.device("cpu")
        self._bound = BoundRun(self.session, bound_device, cuda_graph) if io_binding or cuda_graph else None

    def _run(self, x: Tensor, target: Tensor | None) -> tuple[Tensor, Tensor]:
        if self._bound is not None:
            return self._run_bound(x, target)
        feed = {self._input_name: x.detach().cpu().numpy()}
        if self._has_target:  # a real graph input: -1 (argmax) when the caller gives none
            feed["target"] = (np.full(x.shape[0], -1, dtype=np.int64) if target is None
                              else target.cpu().numpy().astype(np.int64))
        logits, cam = self.session.run(["logits", "cam"], feed)
        return torch.from_numpy(logits), torch.from_numpy(cam)

    def _run_bound(self, x: Tensor, target: Tensor | None) -> tuple[Tensor, Tensor]:
        assert self._bound is not None
        n = x.shape[0]
        spatial = tuple(x.shape[1:3]) if self.info.input_layout == "nhwc" else tuple(x.shape[2:])
        inputs = {self._input_name: x.detach()}
        if self._has_target:
            inputs["target"] = torch.full((n,), -1, dtype=torch.long) if target is None else target.to(torch.long)
        out = self._bound(inputs, {"logits": (n, self.info.num_classes), "cam": (n, *spatial)})
        return out["logits"], out["cam"]


def session_options(threads: int | None = None, spin: bool = True):
    """ONNX Runtime session options: ``threads`` intra-op threads (None: its default); ``spin=False``
    stops idle threads spinning, which otherwise slows PyTorch calls in between by 1.4-1.6x
    (use it whenever ONNX Runtime and PyTorch are timed in one process)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _cuda_device_id(provider: str | tuple[str, dict]) -> int:
    """The ``device_id`` option of a CUDAExecutionProvider entry (0 when not given)."""
    return int(provider[1].get("device_id", 0)) if isinstance(provider, tuple) else 0


def _provider_name(provider: str | tuple[str, dict]) -> str:
    """``"CUDAExecutionProvider"`` for the name itself or a ``(name, options)`` pair."""
    return provider if isinstance(provider, str) else provider[0]


class TorchScriptExplainer(GraphRuntime):
    """A TorchScript (``.pt``) explanation run by ``torch.jit.load``."""

    fixed_size = False

    def __init__(self, path: str, device: str = "cpu") -> None:
        extra = {METADATA_FILE: ""}
        try:
            self.module = torch.jit.load(path, map_location=device, _extra_files=extra)
        except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError with C++ text
            raise ExportError(f"{path} is not a TorchScript file torch.jit.load can read: "
                              f"{str(exc).strip().splitlines()[0]}") from exc
        if not extra[METADATA_FILE]:
            raise ExportError(f"{path} is a TorchScript file but not one exported by deploycam (no {METADATA_FILE})")
        if is_detector_graph(extra[METADATA_FILE]):
            raise ExportError(f"{path} is a detector explanation: open it with export.load_detector(path)")
        self.info = GraphInfo.from_json(extra[METADATA_FILE])
        self.device = torch.device(device)
        self.backend = f"torchscript/{self.device}"

    def _run(self, x: Tensor, target: Tensor | None) -> tuple[Tensor, Tensor]:
        check_grad_mode()
        x = x.to(self.device)
        # the graph needs grad mode at entry (see export.torchscript); running(): a module call
        with torch.enable_grad(), running():
            logits, cam = self.module(x, None if target is None else target.to(self.device))
        return logits.detach(), cam.detach()


class AotiExplainer(GraphRuntime):
    """An AOTInductor package (``.pt2``) run by ``torch._inductor.aoti_load_package``."""

    fixed_size = True

    def __init__(self, path: str, device: str = "cpu") -> None:
        from export.aoti import METADATA_KEY as AOTI_KEY

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.runner = torch._inductor.aoti_load_package(path)
            metadata = self.runner.get_metadata()
        except Exception as exc:  # noqa: BLE001 - the loader raises RuntimeError with C++ text
            raise ExportError(f"{path} is not an AOTInductor package aoti_load_package can run: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from exc
        if AOTI_KEY not in metadata:
            raise ExportError(f"{path} is an AOTInductor package but not one exported by deploycam (no {AOTI_KEY} "
                              "metadata)")
        self.info = GraphInfo.from_json(metadata[AOTI_KEY])
        compiled_for = metadata.get("AOTI_DEVICE_KEY", "cpu")
        self.device = torch.device(device)
        if self.device.type != compiled_for:
            raise ExportError(f"{path} was compiled for {compiled_for}; it cannot run on {device} (compile it again "
                              f"with an example on {device})")
        self.backend = f"aoti/{self.device}"

    def _run(self, x: Tensor, target: Tensor | None) -> tuple[Tensor, Tensor]:
        x = x.to(self.device).contiguous()
        if target is None:
            target = torch.full((x.shape[0],), -1, dtype=torch.long, device=self.device)
        with running():
            logits, cam = self.runner(x, target.to(self.device))
        return logits, cam


def _archive_metadata(path: str) -> str:
    """``deploycam.json`` of a TorchScript archive, read from the zip without loading the module ("" if none)."""
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.endswith(f"/extra/{METADATA_FILE}"):
                return archive.read(name).decode("utf-8", errors="replace")
    return ""


#: what export.load runs an ONNX file with
ONNX_RUNTIMES = ("onnxruntime", "openvino", "opencv")


def load(path: str | os.PathLike, device: str = "cpu", providers: Sequence[str | tuple[str, dict]] | None = None,
         strict: bool = False, threads: int | None = None, spin: bool = True, runtime: str = "onnxruntime",
         verify: bool = True, io_binding: bool | None = None, cuda_graph: bool = False) -> Any:
    """Open an exported explanation: a :class:`GraphRuntime`, or for a detector's ONNX graph an
    :class:`~export.detector_runtime.OnnxDetectionRuntime` (in ``runtime``'s engine).

    Args:
        path: a ``.onnx`` file (ONNX Runtime), a TorchScript file (``.pt``/``.ts``/``.pth``), or an
            AOTInductor package (``.pt2``, from :func:`export.to_aoti`).
        device: ``"cpu"`` or ``"cuda"``; for ONNX this picks CUDAExecutionProvider when
            onnxruntime-gpu is installed, and falls back to the CPU with a warning otherwise.
        providers: explicit ONNX Runtime providers, in order of preference: names or
            ``(name, options)`` pairs, e.g. ``[("CUDAExecutionProvider", {"use_tf32": 0}), "CPUExecutionProvider"]``.
        strict: raise instead of falling back when a requested provider is missing.
        threads: ONNX Runtime intra-op threads (None: its default).
        spin: let ONNX Runtime's idle threads spin (its default); False when timing it against PyTorch
            in one process, where spinning threads slow the other library down.
        runtime: for ``.onnx`` files: ``"onnxruntime"``, ``"openvino"`` (``device`` ``"cpu"``, ``"gpu"``
            or any OpenVINO device name; float32 precision) or ``"opencv"`` (OpenCV 5's DNN engine,
            CPU); see :mod:`export.engines`.
        verify: OpenVINO / OpenCV: check the engine against ONNX Runtime on a random batch when opening
            the file, and raise :class:`ExportError` if it computes the graph wrongly.
        io_binding: ONNX Runtime: bind inputs and outputs to torch tensors on the session's device
            (None: on for the CUDA provider, whose results then stay on the GPU).
        cuda_graph: ONNX Runtime's CUDA provider records and replays CUDA graphs (one per input shape);
            :class:`ExportError` on any other provider. See :mod:`export.ort_binding`.

    Raises :class:`~explainer.errors.GraphFileNotFoundError` (an :class:`ExportError` and a
    ``FileNotFoundError``) for a missing file, and :class:`ExportError` for a folder, a suffix other than
    ``.onnx``/``.pt``/``.ts``/``.pth``/``.pt2``, or a file that is not an exported explanation.
    """
    path = os.fspath(path)
    if runtime not in ONNX_RUNTIMES:
        raise ExportError(f"runtime must be one of {', '.join(ONNX_RUNTIMES)}, got {runtime!r}")
    suffix = check_graph_path(path)
    if suffix == ".onnx" and runtime != "onnxruntime" and detector_info(path) is not None:
        return OnnxDetectionRuntime(path, runtime, device, threads, spin)
    if runtime != "onnxruntime":
        if suffix != ".onnx":
            raise ExportError(f"runtime={runtime!r} runs .onnx files; {path} is a {GRAPH_SUFFIXES[suffix]} file "
                              "(runtime='onnxruntime', the default, opens it)")
        from export.engines import OpenCvExplainer, OpenVinoExplainer

        engine = OpenVinoExplainer if runtime == "openvino" else OpenCvExplainer
        return engine(path, device, verify)
    if suffix == ".pt2":
        return AotiExplainer(path, device)
    if suffix == ".onnx" and detector_info(path) is not None:
        return OnnxDetectionRuntime(path, runtime, device, threads, spin)
    if suffix == ".onnx":
        return OnnxRuntimeExplainer(path, device, providers, strict, threads, spin, io_binding, cuda_graph)
    if zipfile.is_zipfile(path):
        if is_detector_graph(_archive_metadata(path)):
            raise ExportError(f"{path} is a detector explanation: open it with export.load_detector(path)")
        return TorchScriptExplainer(path, device)
    raise ExportError(f"{path} is not a TorchScript archive (not a zip file)")
