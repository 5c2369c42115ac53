"""CUDA graphs of whole explanation calls: ``Explainer(..., cuda_graphs=True)``.

On a GPU an explanation is launch-bound at small batches: the backbone, the head, its backward, the
method and the upsampling are a few hundred small kernels, each launched from Python. A CUDA graph
records those launches once and replays them with one call. :class:`GraphedCalls` records one graph
per *call signature* (input shape, dtype and device; target form; ``topk``; train/eval mode; where
the weights live) and replays it for later calls of the same signature:

    first call of a signature: warm-up runs on a side stream (cuDNN/cuBLAS choose their kernels),
                               then one run recorded into a CUDA graph, on static input buffers
    every later call:          copy the images (and targets) into the static buffers, replay,
                               clone the outputs, read the call's value checks (one synchronisation)

The recorded function is the eager explainer's own step sequence (:meth:`Explainer._run_parts`), so
the maps are the eager maps (the same kernels run); nothing is restated. What the graph holds fixed:
the addresses of the weights (in-place updates such as ``load_state_dict`` or an optimizer step are
seen; moving the model or assigning new parameter tensors is detected through the first parameter's
address and records a new graph) and the shapes of its signature.

Recording can fail for models that synchronise with the host inside ``forward`` (``.item()``,
data-dependent shapes, CPU tensors): such a signature then runs eagerly, with one ``RuntimeWarning``
saying why. Errors of the caller's input (:class:`~explainer.errors.DeployCamError`) are raised as
usual. Each graph keeps its own memory pool (about one call's activations and gradients) until
:meth:`GraphedCalls.clear` or the explainer is dropped.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch
from torch import Tensor

from explainer.checks import DeferredChecks
from explainer.errors import DeployCamError

#: what a recorded function returns: its output tensors and the value checks of the run
Recorded = tuple[tuple[Tensor, ...], DeferredChecks]
#: ``capture(fn) -> (what fn returned while recorded, replay)``: replay re-runs the recording in place
Capture = Callable[[Callable[[], Recorded]], tuple[Recorded, Callable[[], None]]]


def cuda_capture(fn: Callable[[], Recorded], warmup: int = 2) -> tuple[Recorded, Callable[[], None]]:
    """Record ``fn`` into a ``torch.cuda.CUDAGraph`` after ``warmup`` runs on a side stream (PyTorch's
    recipe: the warm-up lets cuDNN/cuBLAS pick and initialise kernels outside the capture)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        recorded = fn()
    return recorded, graph.replay


def rerun_capture(fn: Callable[[], Recorded]) -> tuple[Recorded, Callable[[], None]]:
    """The same protocol without CUDA: "replay" runs ``fn`` again and copies its outputs into the first
    run's tensors. It exercises everything around the graph (static buffers, signatures, deferred
    checks, threads) on the CPU; it is not faster than a plain call."""
    outputs, checks = fn()
    recorded = tuple(t.clone() for t in outputs), checks  # own storage (an output may be an expanded view)

    def replay() -> None:
        outputs, _ = fn()
        for static, new in zip(recorded[0], outputs):
            static.copy_(new)

    return recorded, replay


@dataclass
class _Recording:
    inputs: tuple[Tensor | None, ...]
    outputs: tuple[Tensor, ...]
    flags: Tensor | None  # the recorded run's value checks, stacked (updated by every replay)
    checks: DeferredChecks
    replay: Callable[[], None]


class GraphedCalls:
    """Recorded calls of one explainer, keyed by call signature; thread-safe (one replay at a time).

    ``graphed(signature, fn, *inputs)`` returns ``fn(checks, *inputs)``'s output tensors, cloned; ``fn``
    must read its inputs only from its arguments (they become the graph's static buffers) and register
    value checks on ``checks`` instead of reading them. Returns None when this signature cannot be
    recorded (see the module docstring): the caller then runs eagerly.
    """

    def __init__(self, capture: Capture = cuda_capture, device_type: str = "cuda") -> None:
        self._capture = capture
        #: calls on inputs of this device type are recorded; others run eagerly
        self.device_type = device_type
        self._recordings: dict[Hashable, _Recording | None] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """The number of recorded graphs."""
        return sum(r is not None for r in self._recordings.values())

    def empty_copy(self) -> GraphedCalls:
        """A new, empty set with the same capture (for an explainer that shares the model, not the method)."""
        return GraphedCalls(self._capture, self.device_type)

    def clear(self) -> None:
        """Drop every recorded graph and its memory pool."""
        with self._lock:
            self._recordings.clear()

    def __call__(self, signature: Hashable, fn: Callable[..., Recorded],
                 *inputs: Tensor | None) -> tuple[Tensor, ...] | None:
        with self._lock:
            if signature not in self._recordings:
                self._recordings[signature] = self._record(signature, fn, inputs)
            recording = self._recordings[signature]
            if recording is None:
                return None
            for static, given in zip(recording.inputs, inputs):
                if static is not None and given is not None:
                    static.copy_(given)
            recording.replay()  # also after recording: a CUDA graph capture records kernels without running them
            outputs = tuple(t.clone() for t in recording.outputs)
            flags = None if recording.flags is None else recording.flags.clone()
        if flags is not None:
            recording.checks.raise_failed(flags.tolist())  # the call's one synchronisation
        return outputs

    def _record(self, signature: Hashable, fn: Callable[..., Recorded],
                inputs: tuple[Tensor | None, ...]) -> _Recording | None:
        static = tuple(None if t is None else t.clone() for t in inputs)

        def run() -> Recorded:  # the checks' flags are stacked inside the recording, so replays update them
            outputs, checks = fn(*static)
            flags = checks.pending()
            return (*outputs, *(() if flags is None else (flags,))), checks

        try:
            (outputs, checks), replay = self._capture(run)
        except DeployCamError:
            raise
        except Exception as exc:  # noqa: BLE001 - capture failures come from many places in torch
            warnings.warn(f"deploycam: could not record a CUDA graph for calls of signature {signature} "
                          f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); "
                          "these calls run eagerly", RuntimeWarning, stacklevel=4)
            return None
        if not checks:
            return _Recording(static, outputs, None, checks, replay)
        return _Recording(static, outputs[:-1], outputs[-1], checks, replay)
