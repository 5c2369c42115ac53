"""ONNX Runtime runs that read and write torch tensors in place: IO binding, and ONNX Runtime's CUDA graphs.

``session.run(feed)`` takes numpy arrays: on the GPU every call copies the images to the host and back,
and the maps back again. :class:`BoundRun` binds the graph's inputs and outputs to torch tensors on the
session's device instead (``session.io_binding()``), so a CUDA batch never leaves the GPU. With
``cuda_graph`` (CUDAExecutionProvider only, session option ``enable_cuda_graph``) ONNX Runtime records
the whole graph as a CUDA graph on the first run and replays it afterwards; that needs the same buffer
addresses on every run, so each input shape gets static buffers (copied into, outputs cloned) and its
own graph id (run option ``gpu_graph_id``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

_NUMPY_TYPES = {torch.float32: np.float32, torch.int64: np.int64}


@dataclass
class _Static:
    """One input shape's fixed buffers (ONNX Runtime's CUDA graph replays read and write these addresses)."""

    binding: Any
    inputs: dict[str, Tensor]
    outputs: dict[str, Tensor]
    options: Any


class BoundRun:
    """``run(inputs: {name: tensor}, outputs: {name: shape}) -> {name: tensor}`` through IO binding.

    Args:
        session: an ``onnxruntime.InferenceSession``.
        device: where the bound tensors live: ``cpu``, or ``cuda[:i]`` for CUDAExecutionProvider.
        cuda_graph: the session was made with ``enable_cuda_graph`` (see the module docstring).

    Inputs are moved to ``device`` (a no-op when they are there); outputs are float32 tensors there.
    Thread-safe: runs of one shape with ``cuda_graph`` share buffers and take turns.
    """

    def __init__(self, session: Any, device: torch.device, cuda_graph: bool = False) -> None:
        self.session = session
        self.device = device
        self.cuda_graph = cuda_graph
        self._static: dict[tuple, _Static] = {}
        self._lock = threading.Lock()

    def _bind(self, binding: Any, inputs: dict[str, Tensor], outputs: dict[str, Tensor]) -> None:
        kind, index = self.device.type, self.device.index or 0
        for name, t in inputs.items():
            binding.bind_input(name, kind, index, _NUMPY_TYPES[t.dtype], tuple(t.shape), t.data_ptr())
        for name, t in outputs.items():
            binding.bind_output(name, kind, index, _NUMPY_TYPES[t.dtype], tuple(t.shape), t.data_ptr())

    def __call__(self, inputs: dict[str, Tensor], outputs: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
        inputs = {name: t.to(self.device).contiguous() for name, t in inputs.items()}
        if not self.cuda_graph:
            out = {name: torch.empty(shape, dtype=torch.float32, device=self.device) for name, shape in outputs.items()}
            binding = self.session.io_binding()
            self._bind(binding, inputs, out)
            self._run(binding, None)
            return out
        key = tuple((name, tuple(t.shape), t.dtype) for name, t in inputs.items())
        with self._lock:
            static = self._static.get(key)
            if static is None:
                static = self._static[key] = self._make_static(inputs, outputs)
            for name, t in inputs.items():
                static.inputs[name].copy_(t)
            self._run(static.binding, static.options)
            return {name: t.clone() for name, t in static.outputs.items()}

    def _make_static(self, inputs: dict[str, Tensor], outputs: dict[str, tuple[int, ...]]) -> _Static:
        import onnxruntime as ort

        static_in = {name: t.clone() for name, t in inputs.items()}
        static_out = {name: torch.empty(shape, dtype=torch.float32, device=self.device) for name, shape in outputs.items()}
        binding = self.session.io_binding()
        self._bind(binding, static_in, static_out)
        options = ort.RunOptions()
        options.add_run_config_entry("gpu_graph_id", str(len(self._static) + 1))  # one graph per shape
        return _Static(binding, static_in, static_out, options)

    def _run(self, binding: Any, options: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # the inputs are written before ORT reads them
            binding.synchronize_inputs()
        self.session.run_with_iobinding(binding, options)
        if self.device.type == "cuda":
            binding.synchronize_outputs()
