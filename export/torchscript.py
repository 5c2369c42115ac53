"""TorchScript export: the explanation with its gradient, loadable from Python or C++ (libtorch).

The scripted module calls ``torch.autograd.grad`` itself, so the caller must
leave grad mode on: not ``torch.no_grad()`` / ``torch::NoGradGuard``, nor
``torch.inference_mode()`` / ``c10::InferenceMode``. (Entered without grad, TorchScript's
executor strips autograd from its optimised plan from the second call on, so the graph
refuses such calls with a clear error instead; the backbone still runs without grad
inside. :func:`export.load`'s runtime enables grad for you.) torch 2.14 warns that ``torch.jit`` is deprecated in favour of
``torch.export``; TorchScript is still what libtorch loads, so the warning is
left visible and nothing is silenced.

Do not pass the file through ``torch.jit.optimize_for_inference`` (it drops the
gradient) nor re-trace it with ``torch.jit.trace`` (it bakes in the batch size).
"""


import os
import warnings
from typing import overload

import torch
from torch import Tensor, nn

from explainer.core import Explainer
from explainer.detection import DetectionExplainer
from explainer.errors import ExportError
from explainer.tracing_lock import tracing
from export.detection_graph import DetectorGraphInfo, detector_to_torchscript
from export.graph import ExplanationGraph, autograd_step, forward_step
from export.parts import (
    AsTuple,
    GraphInfo,
    check_destination,
    export_parts,
    head_caller,
    in_model_layout,
    method_module,
)

METADATA_FILE = "deploycam.json"


def build_scriptable(explainer: Explainer, example_input: Tensor, part: str = "full") -> tuple[nn.Module, GraphInfo]:
    """The (not yet scripted) :class:`~export.graph.ExplanationGraph` with the autograd step, and its metadata."""
    parts = export_parts(explainer, explainer.to_nchw(example_input), part, "torchscript")
    backbone = parts.backbone if part == "full" else AsTuple()
    n_packed = 1 + (len(parts.skips) if part == "full" else 0)
    caller = head_caller(parts.head, n_packed)
    step = autograd_step(caller, n_packed) if parts.method.needs_gradient else forward_step(caller, n_packed)
    module: nn.Module = ExplanationGraph(backbone, step, method_module(parts.method), parts.method.needs_gradient,
                              upsample=part == "full")
    object.__setattr__(module, "training", False)  # the wrapper only; shared submodules keep their flags
    return in_model_layout(module, parts.info), parts.info


def script_module(module: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script(module)`` under the tracing lock, without the checker's false alarm.

    TorchScript's AST checker reads the top module's ``__init__``; torch.fx's own
    ``GraphModule.__init__`` annotates empty dicts, so scripting any fx graph warns about
    "instance-level annotations" with a stray ``return visitor(node)`` line from Python's
    ast module. The graph is scripted correctly; that one warning is silenced here only.
    """
    with tracing(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*instance-level annotations")
        return torch.jit.script(module)


@overload
def to_torchscript(explainer: Explainer, path: str | os.PathLike, example_input: Tensor,
                   part: str = "full") -> GraphInfo: ...
@overload
def to_torchscript(explainer: DetectionExplainer, path: str | os.PathLike, example_input: Tensor,
                   part: str = "full") -> DetectorGraphInfo: ...
def to_torchscript(explainer: Explainer | DetectionExplainer, path: str | os.PathLike, example_input: Tensor,
                   part: str = "full") -> GraphInfo | DetectorGraphInfo:
    """Script the explanation and save it to ``path`` (``torch.jit.save``; metadata in ``deploycam.json``).

    Args:
        explainer: an eval-mode :class:`~explainer.Explainer`.
        path: output file, conventionally ``*.pt``.
        example_input: an image batch ``(N, 3, H, W)`` used to check shapes (any N).
        part: ``"full"`` (image -> logits, cam ``(N, H, W)``) or ``"head"``
            (activations ``(N, C, h, w)`` -> logits, cam ``(N, h, w)``).

    Returns the :class:`GraphInfo` written into the file. Raises :class:`ExportError`
    when the model cannot be scripted (the message names TorchScript's complaint).

    A detector explanation (:meth:`Explainer.for_detector`) is saved as a
    :class:`~export.detection_graph.DetectionGraph`: ``(images, labels (N, B), boxes (N, B, 4)) ->
    (detections, cams (N, H, W))``, reference boxes as inputs; ``part`` must be ``"full"``.
    """
    if isinstance(explainer, DetectionExplainer):
        if part != "full":
            raise ExportError("a detector explanation exports as one graph from the images (part='full')")
        return detector_to_torchscript(explainer, path, example_input)
    check_destination(path)
    with tracing():  # scripting compiles the model's modules: no fx trace may patch them meanwhile
        module, info = build_scriptable(explainer, example_input, part)
    try:
        scripted = script_module(module)
    except Exception as exc:  # noqa: BLE001 - TorchScript raises many frontend errors
        raise ExportError(
            f"torch.jit.script could not compile the explanation of {info.layer!r}: "
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
        ) from exc
    torch.jit.save(scripted, os.fspath(path), _extra_files={METADATA_FILE: info.to_json()})
    return info
