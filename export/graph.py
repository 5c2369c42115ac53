"""The exported explanation: one graph body for every format, with a pluggable gradient step.

:class:`ExplanationGraph` is the step sequence of :mod:`explainer.pipeline` as a module::

    input -> backbone, without grad -> packed = (activations, *skips)
          -> step(packed, target)   -> logits (N, classes), gradients (N, 1, C, h, w)
          -> method(activations, gradients) -> finish_maps -> cam

Only the gradient step differs between formats:

* TorchScript: :func:`autograd_step` -- ``torch.autograd.grad`` inside the graph.
* ONNX (no autograd there): :class:`TracedStep` -- the head's gradient traced ahead of time with
  ``make_fx``; :class:`AnalyticStep` -- the exact ``W[target] / (h w)`` of pool + linear heads.
* Activation-only methods (Eigen-CAM): :func:`forward_step`, the head's logits only.

Every step reads the target the same way (:func:`explainer.gradients.resolve_target`: negative
means argmax) and builds the score as a one-hot product, so an out-of-range target gives an
all-zero map in every format. (No ``from __future__ import annotations`` here: TorchScript reads
the annotations of :class:`ExplanationGraph` as objects.)
"""

import operator
from typing import Optional, Tuple

import torch
from torch import Tensor, fx, nn

from explainer.gradients import one_hot_target, single_target_gradient
from explainer.pipeline import finish_maps


class ExplanationGraph(nn.Module):
    """``forward(input, target=None) -> (logits (N, K), cam)``, scriptable and exportable.

    ``input``: images ``(N, 3, H, W)`` (part "full"; ``cam`` is ``(N, H, W)``, upsampled) or the
    layer's activations ``(N, C, h, w)`` (part "head"; ``cam`` is ``(N, h, w)``); ``target``:
    ``(N,)`` int64, negative (or None in TorchScript) for each image's argmax. Maps are min-max
    normalised.
    """

    needs_gradient: bool
    upsample: bool

    def __init__(self, backbone: nn.Module, step: nn.Module, method: nn.Module, needs_gradient: bool,
                 upsample: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.step = step
        self.method = method
        self.needs_gradient = needs_gradient
        self.upsample = upsample

    def forward(self, input: Tensor, target: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        if self.needs_gradient and not torch.is_grad_enabled():
            # TorchScript's executor chooses its plan by the grad mode at entry: entered without grad
            # it strips autograd from the second call on, and the gradient step would fail.
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
            logits, gradients = self.step(packed, target)
        else:
            with torch.no_grad():
                logits, gradients = self.step(packed, target)
        cam = finish_maps(self.method(activations, gradients), input.shape[-2], input.shape[-1], self.upsample)
        return logits.detach(), cam[:, 0]


def _leaf(activations: Tensor) -> Tensor:
    return activations.detach().requires_grad_(True)


def _no_gradient(activations: Tensor) -> Tensor:
    return activations.new_empty(0)


def _scriptable_step(head_caller: nn.Module, n_packed: int, needs_gradient: bool) -> fx.GraphModule:
    """``(packed, target) -> (logits, gradients)`` as an fx graph typed for TorchScript.

    TorchScript has no variadic tuples, so the step is generated for the backbone's arity
    ``n_packed``; ``head_caller(activations, packed)`` runs the head on the packed skips.
    """
    graph = fx.Graph()
    packed = graph.placeholder("packed")
    packed.type = Tuple[(Tensor,) * n_packed]
    target = graph.placeholder("target")
    target.type = Optional[Tensor]
    activations = graph.call_function(operator.getitem, (packed, 0))
    if needs_gradient:
        leaf = graph.call_function(_leaf, (activations,))
        logits = graph.call_module("head", (graph.call_method("clone", (leaf,)), packed))
        gradients = graph.call_function(single_target_gradient, (logits, leaf, target))
    else:
        logits = graph.call_module("head", (graph.call_method("clone", (activations,)), packed))
        gradients = graph.call_function(_no_gradient, (activations,))
    graph.output((logits, gradients))
    root = nn.Module()
    root.head = head_caller
    return fx.GraphModule(root, graph, class_name="AutogradStep" if needs_gradient else "ForwardStep")


def autograd_step(head_caller: nn.Module, n_packed: int) -> fx.GraphModule:
    """The TorchScript gradient step: ``torch.autograd.grad`` of the target logit w.r.t. the activations."""
    return _scriptable_step(head_caller, n_packed, needs_gradient=True)


def forward_step(head_caller: nn.Module, n_packed: int) -> fx.GraphModule:
    """The step of activation-only methods: the head's logits, an empty gradient (scriptable and exportable)."""
    return _scriptable_step(head_caller, n_packed, needs_gradient=False)


class TracedStep(nn.Module):
    """ONNX: the head's gradient traced ahead of time, ``traced(activations, target, *skips) -> (logits, grads)``."""

    def __init__(self, traced: fx.GraphModule) -> None:
        super().__init__()
        self.traced = traced

    def forward(self, packed: tuple[Tensor, ...], target: Tensor) -> tuple[Tensor, Tensor]:
        logits, gradients = self.traced(packed[0], target, *packed[1:])
        return logits, gradients.unsqueeze(1)


class AnalyticStep(nn.Module):
    """ONNX, global-average-pool + linear heads: d logit_k / dA[c, i, j] = W[k, c] / (h w), exactly."""

    weight: Tensor

    def __init__(self, head: nn.Module, weight: Tensor) -> None:
        super().__init__()
        self.head = head
        self.register_buffer("weight", weight.detach().clone(), persistent=False)

    def forward(self, packed: tuple[Tensor, ...], target: Tensor) -> tuple[Tensor, Tensor]:
        activations = packed[0]
        logits = self.head(activations.clone())  # clone: the head may modify its input in place
        h, w = activations.shape[-2], activations.shape[-1]
        # a one-hot product, not an index: an out-of-range target gives zeros, as the other steps do
        gradients = ((one_hot_target(logits, target) @ self.weight) / (h * w))[:, :, None, None]
        gradients = gradients.expand(activations.shape)
        return logits, gradients.unsqueeze(1)


class ChannelsLastInput(nn.Module):
    """The graph of a model that takes ``(N, H, W, C)`` images (TensorFlow style, an ONNX model with
    ``input_layout="nhwc"``): ``forward(input (N, H, W, C), target) -> explanation(input as (N, C, H, W), target)``."""

    def __init__(self, explanation: nn.Module) -> None:
        super().__init__()
        self.explanation = explanation

    def forward(self, input: Tensor, target: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        return self.explanation(input.permute(0, 3, 1, 2), target)
