"""Input validation: clear errors before anything reaches torch.

Checks that read tensor values (NaN/inf, target ranges on the GPU) would each force a
host-device synchronisation in the middle of a call; :class:`DeferredChecks` collects them
as boolean tensors and reads them all at once, at the end of the call (or before a slow
perturbation loop), and raises the first failure.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import Tensor, fx, nn

from explainer.errors import GradModeError, InputError, MethodError, ModelOutputError, NonFiniteError
from explainer.head_structure import find_linear_head
from explainer.methods.base import CamMethod
from explainer.tracing_lock import tracing


def model_device_dtype(module: nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
    """Device and dtype of the module's first floating parameter or buffer (None if it has none)."""
    for t in itertools.chain(module.parameters(), module.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return None, None


class DeferredChecks:
    """Value checks as ``(ok: bool tensor, error factory)`` pairs, verified with one synchronisation."""

    def __init__(self) -> None:
        self._items: list[tuple[Tensor, Callable[[], Exception]]] = []

    def add(self, ok: Tensor, error: Callable[[], Exception]) -> None:
        """Register ``ok`` (a 0-d bool tensor, True when fine) and what to raise when it is False."""
        self._items.append((ok.reshape(()), error))

    def __len__(self) -> int:
        """The number of registered checks."""
        return len(self._items)

    def verify(self) -> None:
        """Read every pending flag (one host-device sync) and raise the first failure, in order added."""
        flags = self.pending()
        if flags is not None:
            try:
                self.raise_failed(flags.tolist())
            finally:
                self._items = []

    def pending(self) -> Tensor | None:
        """The registered flags stacked into one bool tensor ``(n,)`` (no synchronisation), None if none."""
        if not self._items:
            return None
        return torch.stack([ok.to(self._items[0][0].device) for ok, _ in self._items])

    def raise_failed(self, flags: list[bool]) -> None:
        """Raise the error of the first False among ``flags`` (values of :meth:`pending`), in order added."""
        for flag, (_, error) in zip(flags, self._items):
            if not flag:
                raise error()


def check_input(x: Tensor, device: torch.device | None, dtype: torch.dtype | None, in_channels: int | None,
                deferred: DeferredChecks | None = None, allow_empty: bool = False) -> None:
    """Raise :class:`InputError` unless ``x`` is a finite ``(N, C, H, W)`` float batch the model can take.

    With ``deferred``, the NaN/inf check is registered there instead of read now; ``allow_empty`` lets
    ``N = 0`` through (detectors: an empty batch has an empty result).
    """
    if not isinstance(x, Tensor):
        raise InputError(f"input must be a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        hint = " (add a batch axis: x.unsqueeze(0))" if x.ndim == 3 else ""
        raise InputError(f"input must be 4-D (N, C, H, W); got shape {tuple(x.shape)}{hint}")
    if x.shape[0] == 0 and not allow_empty:
        raise InputError("input batch is empty (N = 0); pass at least one image")
    if in_channels is not None and x.shape[1] != in_channels:
        raise InputError(f"input has {x.shape[1]} channels but the model's first convolution expects {in_channels}")
    if not x.is_floating_point():
        raise InputError(
            f"input dtype is {x.dtype}; the model needs a floating tensor"
            f"{f' ({dtype})' if dtype is not None else ''}: normalise images, e.g. x.float() / 255"
        )
    if dtype is not None and x.dtype != dtype:
        raise InputError(f"input dtype {x.dtype} does not match the model's {dtype}; convert with x.to({dtype})")
    if device is not None and x.device != device:
        raise InputError(f"input is on {x.device} but the model is on {device}; move it with x.to('{device}')")
    finite = torch.isfinite(x).all()
    error = lambda: InputError("input contains NaN or inf values")  # noqa: E731
    if deferred is not None:
        deferred.add(finite, error)
    elif not bool(finite):
        raise error()


def check_grad_mode() -> None:
    """Raise :class:`GradModeError` inside ``torch.inference_mode()``, where autograd cannot run."""
    if torch.is_inference_mode_enabled():
        raise GradModeError(
            "explanations need autograd, which torch.inference_mode() disables; "
            "call the explainer outside inference_mode (torch.no_grad() is fine: "
            "the backbone runs without grad anyway)"
        )


def check_method_fits(method: CamMethod, head: object, layer: str, reshape: object | None) -> None:
    """:class:`MethodError` / :class:`GradModeError` when ``method`` cannot run on ``head`` at ``layer``.

    CAM needs a global-average-pool + linear head; methods that re-run the head on changed
    activations need the layer's own layout (no ``reshape``); gradient methods cannot differentiate
    through tensors created under ``torch.inference_mode``.
    """
    if reshape is not None and method.reruns_head:
        raise MethodError(
            f"{method.name!r} feeds changed activations back to the head, which reads the layer's own "
            "layout, so it cannot run through reshape=; use a gradient method or 'scorecam'"
        )
    if isinstance(head, nn.Module) and method.needs_gradient:
        frozen = [name for name, t in list(head.named_parameters()) + list(head.named_buffers()) if t.is_inference()]
        if frozen:
            raise GradModeError(
                f"the model's tensors after {layer!r} ({', '.join(frozen[:3])}...) were created under "
                "torch.inference_mode, and autograd cannot differentiate through them; build or load the "
                "model outside inference_mode (torch.no_grad() is fine)"
            )
    if not method.requires_linear_head:
        return
    graph = head if isinstance(head, fx.GraphModule) else None
    if graph is None and isinstance(head, nn.Module):
        try:
            with tracing():
                graph = fx.symbolic_trace(head)
        except Exception:  # noqa: BLE001 - any tracing failure means "cannot verify"
            graph = None
    if graph is None:
        raise MethodError(f"{method.name!r} needs a head it can inspect (an nn.Module torch.fx can trace)")
    linear, reason = find_linear_head(graph)
    if linear is None:
        raise MethodError(
            f"{method.name!r} is only defined for heads that are global average pooling + one linear "
            f"layer, and at {layer!r} {reason}; use 'gradcam' (identical for such heads) or pick the "
            "layer right before the pooling"
        )


def check_output(output: Tensor, n: int, deferred: DeferredChecks) -> None:
    """:class:`ModelOutputError` unless the (selected) output has the batch first; its finiteness deferred."""
    if output.ndim < 2 or output.shape[0] != n:
        raise ModelOutputError(
            f"the model returned {tuple(output.shape)}; the explainer needs an output with the batch first, "
            f"(N={n}, num_classes) logits or (N={n}, ...) for target callables"
        )
    deferred.add(torch.isfinite(output).all(),
                 lambda: NonFiniteError("the model produced NaN or inf outputs (logits) for this input"))
