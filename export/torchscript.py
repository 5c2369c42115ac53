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
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from explainer.core import Explainer
from explainer.errors import ExportError
from explainer.gradients import resolve_target, single_target_gradient
from explainer.pipeline import finish_maps
from explainer.tracing_lock import tracing
from export.parts import AsTuple, GraphInfo, check_destination, export_parts, head_caller, method_module

METADATA_FILE = "deploycam.json"


class ScriptableExplanation(nn.Module):
    """``forward(input, target=None) -> (logits (N, K), cam)``, written for ``torch.jit.script``.

    ``input`` is the image ``(N, 3, H, W)`` (part "full"; ``cam`` is ``(N, H, W)``) or the
    activations ``(N, C, h, w)`` (part "head"; ``cam`` is ``(N, h, w)``); ``target`` is
    ``(N,)`` int64, or None for each image's argmax. Maps are min-max normalised.
    """

    needs_gradient: bool
    upsample: bool

    def __init__(self, backbone: nn.Module, head: nn.Module, method: nn.Module, needs_gradient: bool,
                 upsample: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.method = method
        self.needs_gradient = needs_gradient
        self.upsample = upsample

    def forward(self, input: Tensor, target: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        if self.needs_gradient and not torch.is_grad_enabled():
            # TorchScript's executor chooses its plan by the grad mode at entry: entered without grad
            # it strips autograd from the second call on, and the gradient below would fail.
            raise RuntimeError(
                "deploycam: this graph computes a gradient; call it with grad mode enabled "
                "(not under torch.no_grad()/torch::NoGradGuard, nor inference mode)"
            )
        # Grad mode is only ever changed by `with torch.no_grad()` blocks, which restore it on every
        # path, errors included: a failing call leaves the caller's thread as it was.
        with torch.no_grad():
            packed = self.backbone(input)
        activations = packed[0]
        if activations.dim() != 4 or activations.size(2) * activations.size(3) == 1:
            raise RuntimeError(
                "deploycam: the target layer's output for this input is not a spatial map larger than 1x1 "
                "(the input is too small for this graph)"
            )
        if self.needs_gradient:
            leaf = activations.detach().requires_grad_(True)
            logits = self.head(leaf.clone(), packed)
            chosen = resolve_target(logits.detach(), target)
            gradients = single_target_gradient(logits, leaf, chosen)
        else:
            with torch.no_grad():
                logits = self.head(activations.clone(), packed)
            gradients = activations.new_empty(0)
        cam = finish_maps(self.method(activations, gradients), input.shape[-2], input.shape[-1], self.upsample)
        return logits.detach(), cam[:, 0]


def build_scriptable(explainer: Explainer, example_input: Tensor, part: str = "full") -> tuple[nn.Module, GraphInfo]:
    """The (not yet scripted) module and its metadata; see :class:`ScriptableExplanation`."""
    parts = export_parts(explainer, example_input, part, "torchscript")
    backbone = parts.backbone if part == "full" else AsTuple()
    n_packed = 1 + (len(parts.skips) if part == "full" else 0)
    module = ScriptableExplanation(backbone, head_caller(parts.head, n_packed), method_module(parts.method),
                                   parts.method.needs_gradient, upsample=part == "full")
    object.__setattr__(module, "training", False)  # the wrapper only; shared submodules keep their flags
    return module, parts.info


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


def to_torchscript(explainer: Explainer, path: str | os.PathLike, example_input: Tensor,
                   part: str = "full") -> GraphInfo:
    """Script the explanation and save it to ``path`` (``torch.jit.save``; metadata in ``deploycam.json``).

    Args:
        explainer: an eval-mode :class:`~explainer.Explainer`.
        path: output file, conventionally ``*.pt``.
        example_input: an image batch ``(N, 3, H, W)`` used to check shapes (any N).
        part: ``"full"`` (image -> logits, cam ``(N, H, W)``) or ``"head"``
            (activations ``(N, C, h, w)`` -> logits, cam ``(N, h, w)``).

    Returns the :class:`GraphInfo` written into the file. Raises :class:`ExportError`
    when the model cannot be scripted (the message names TorchScript's complaint).
    """
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
