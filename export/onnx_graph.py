"""ONNX export of the explanation, gradient included.

No ONNX exporter accepts ``torch.autograd.grad`` (nor ``torch.func.grad``) inside
``forward``. What works: trace the head's gradient *first* with ``make_fx`` and the
decompositions of :mod:`export.decompositions`, which leaves a plain forward graph
of ATen ops (transposed convolutions in place of convolution backward), then export
that graph with ``torch.onnx.export(..., dynamo=True)``. Heads that are global
average pooling + one linear layer skip the tracing: their gradient is exactly
``W[target] / (h w)`` at every position.

The graph's inputs are ``input`` (or ``activations``) and ``target``; ``target``
has a default of ``[-1]``, so ONNX Runtime may be called without it, and any
negative entry means "this image's argmax". An out-of-range target inside the
graph selects no class and gives an all-zero map; :func:`export.load`'s runtime
checks targets before running the graph.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re

import torch
from torch import Tensor, fx, nn
from torch.export import Dim
from torch.fx.experimental.proxy_tensor import make_fx

from explainer.core import Explainer
from explainer.errors import ExportError
from explainer.head_structure import find_linear_head
from explainer.postprocess import normalize_maps, upsample_maps
from export.decompositions import gradient_decompositions
from export.parts import GraphInfo, export_parts, method_module

METADATA_KEY = "deploycam"


def _resolve_target(logits: Tensor, target: Tensor) -> Tensor:
    """``target`` where it is >= 0, else the argmax of ``logits``; ``(N,)`` (target may be ``(1,)``)."""
    return torch.where(target < 0, logits.argmax(dim=1), target)


def global_pool_as_mean(head: nn.Module) -> nn.Module:
    """A copy of an fx head whose ``AdaptiveAvgPool2d(1)`` calls are ``mean(dim=(-2, -1), keepdim=True)``.

    Same math; the pooling op's own decomposition leaves ``as_strided`` views whose
    gradient (``as_strided_scatter``) has no ONNX operator (ConvNeXt's head hits it).
    The model's modules are shared, not copied; other heads pass through unchanged.
    """
    if not isinstance(head, fx.GraphModule):
        return head
    graph = copy.deepcopy(head.graph)
    changed = False
    for node in list(graph.nodes):
        is_module = node.op == "call_module" and isinstance(head.get_submodule(node.target), nn.AdaptiveAvgPool2d) \
            and head.get_submodule(node.target).output_size in (1, (1, 1))
        is_function = node.op == "call_function" and node.target is torch.nn.functional.adaptive_avg_pool2d \
            and (node.args[1:2] or [node.kwargs.get("output_size")])[0] in (1, (1, 1), [1, 1])
        if is_module or is_function:
            with graph.inserting_after(node):
                mean = graph.call_method("mean", (node.args[0],), {"dim": (-2, -1), "keepdim": True})
            node.replace_all_uses_with(mean)
            graph.erase_node(node)
            changed = True
    return fx.GraphModule(head, graph, class_name="OnnxHead") if changed else head


def trace_gradient_step(head: nn.Module, activations: Tensor, target: Tensor, skips: tuple[Tensor, ...]) -> fx.GraphModule:
    """``(activations, target, *skips) -> (logits, d logit[target] / d activations)`` as a forward-only fx graph."""

    def step(a: Tensor, t: Tensor, *extra: Tensor):
        def score(leaf: Tensor):
            logits = head(leaf.clone(), *extra)
            chosen = _resolve_target(logits, t)
            one_hot = (torch.arange(logits.shape[1], device=leaf.device) == chosen[:, None]).to(logits.dtype)
            return (logits * one_hot).sum(), logits

        grads, logits = torch.func.grad(score, has_aux=True)(a)
        return logits, grads

    try:
        return make_fx(step, decomposition_table=gradient_decompositions(), tracing_mode="symbolic",
                       _allow_non_fake_inputs=True)(activations, target, *skips)
    except Exception as exc:  # noqa: BLE001 - tracing failures come in many types
        raise ExportError(f"could not trace the head's gradient for ONNX: {type(exc).__name__}: {exc}") from exc


class AnalyticGradientStep(nn.Module):
    """For global-average-pool + linear heads: d logit_k / dA[c, i, j] = W[k, c] / (h w), exactly."""

    def __init__(self, head: nn.Module, weight: Tensor) -> None:
        super().__init__()
        self.head = head
        self.register_buffer("weight", weight.detach().clone(), persistent=False)

    def forward(self, activations: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.head(activations.clone())  # clone: the head may modify its input in place
        chosen = _resolve_target(logits, target)
        h, w = activations.shape[-2], activations.shape[-1]
        grads = (self.weight[chosen] / (h * w))[:, :, None, None].expand(activations.shape)
        return logits, grads


class ForwardStep(nn.Module):
    """For methods without a gradient (Eigen-CAM): the head's logits; the activations stand in for the
    gradient argument the method ignores."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, activations: Tensor, target: Tensor, *skips: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(activations.clone(), *skips), activations  # clone: heads may ReLU in place (DenseNet)


class OnnxExplanation(nn.Module):
    """``forward(input, target) -> (logits (N, K), cam)``; backbone None for part "head"."""

    def __init__(self, backbone: nn.Module | None, step: nn.Module, method: nn.Module, upsample: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.step = step
        self.method = method
        self.upsample = upsample

    def forward(self, input: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        if self.backbone is not None:
            packed = self.backbone(input)
            activations, skips = packed[0], tuple(packed[1:])
        else:
            activations, skips = input, ()
        logits, grads = self.step(activations, target, *skips)
        cam = normalize_maps(self.method(activations, grads.unsqueeze(1))[:, 0])
        if self.upsample:
            cam = upsample_maps(cam.unsqueeze(1), input.shape[-2], input.shape[-1])[:, 0]
        return logits, cam


def build_onnx_module(explainer: Explainer, example_input: Tensor, part: str = "full") -> tuple[nn.Module, tuple[Tensor, Tensor], GraphInfo]:
    """The module to export, example arguments (batch >= 2), and metadata."""
    parts = export_parts(explainer, example_input, part, "onnx")
    # The example batch must be >= 2 (a batch of 1 is specialised) and differ from every feature
    # size: make_fx gives equal sizes one symbol, so fixing h would fix the batch with it.
    sizes = set(parts.activations.shape[1:]) | set(example_input.shape[1:])
    batch = next(b for b in range(2, 64) if b not in sizes)
    if example_input.shape[0] != batch:
        example_input = example_input[:1].expand(batch, -1, -1, -1).contiguous()
        parts = export_parts(explainer, example_input, part, "onnx")
    target = torch.zeros(parts.activations.shape[0], dtype=torch.long, device=parts.activations.device)
    linear = None if parts.skips else find_linear_head(parts.head)[0] if isinstance(parts.head, fx.GraphModule) else None
    if not parts.method.needs_gradient:
        step: nn.Module = ForwardStep(parts.head)
    elif linear is not None:
        step = AnalyticGradientStep(parts.head, linear.weight)
    else:
        step = trace_gradient_step(global_pool_as_mean(parts.head), parts.activations, target, parts.skips)
    backbone = parts.backbone if part == "full" else None
    module = OnnxExplanation(backbone, step, method_module(parts.method), upsample=part == "full")
    object.__setattr__(module, "training", False)
    first = example_input if part == "full" else parts.activations
    return module, (first, target), parts.info


def to_onnx(explainer: Explainer, path: str | os.PathLike, example_input: Tensor, part: str = "full",
            opset: int | None = None, dynamic_batch: bool = True) -> GraphInfo:
    """Export the explanation to an ONNX file that needs no custom operator.

    Args:
        explainer: an eval-mode :class:`~explainer.Explainer` with a method that needs no SVD.
        path: output ``.onnx`` file (weights inside it, no ``.onnx.data``).
        example_input: image batch ``(N, 3, H, W)``; the graph's spatial size is fixed to ``H x W``.
        part: ``"full"``: ``input`` image -> ``logits``, ``cam (N, H, W)``; ``"head"``:
            ``activations (N, C, h, w)`` -> ``logits``, ``cam (N, h, w)`` (min-max normalised).
        opset: ONNX opset (None: the exporter's default).
        dynamic_batch: keep the batch axis symbolic (named ``batch``).

    Returns the :class:`GraphInfo` stored in the file's metadata under ``deploycam``.
    """
    import onnx

    module, args, info = build_onnx_module(explainer, example_input, part)
    first_name = "input" if part == "full" else "activations"
    batch = Dim("batch", min=1)
    dynamic = ({0: batch}, {0: batch}) if dynamic_batch else None
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            program = torch.onnx.export(
                module, args, dynamo=True, input_names=[first_name, "target"], output_names=["logits", "cam"],
                opset_version=opset, dynamic_shapes=dynamic, external_data=False, verbose=False,
            )
    except Exception as exc:  # noqa: BLE001 - exporter errors vary; name the failing op
        message = str(exc)
        op = re.search(r"op='([^']+)', overload='([^']+)'", message)
        if op:
            reason = (f"the graph uses {op.group(1)}.{op.group(2)}, which has no ONNX translation; "
                      "export to TorchScript instead, or pick a layer whose head avoids it")
        else:
            reason = f"{type(exc).__name__}: {message.strip().splitlines()[0] if message.strip() else ''}"
        raise ExportError(f"torch.onnx.export failed for {info.method!r} at {info.layer!r}: {reason}") from exc
    model = program.model_proto
    _add_default_target(model)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info.to_json()
    onnx.checker.check_model(model)
    onnx.save_model(model, os.fspath(path))
    return info


def _add_default_target(model) -> None:
    """Give the ``target`` input the default ``[-1]`` (argmax) so callers may omit it."""
    import numpy as np
    from onnx import numpy_helper

    if not any(init.name == "target" for init in model.graph.initializer):
        model.graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), name="target"))


def model_to_onnx(model: nn.Module, path: str | os.PathLike, example_input: Tensor, dynamic_batch: bool = True) -> None:
    """Export the plain model (image -> logits, no explanation) to ONNX: the floor to compare against."""
    if example_input.shape[0] < 2:
        example_input = example_input.expand(2, -1, -1, -1).contiguous()
    dynamic = ({0: Dim("batch", min=1)},) if dynamic_batch else None
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(model, (example_input,), dynamo=True, input_names=["input"],
                                    output_names=["logits"], dynamic_shapes=dynamic, external_data=False)
    program.save(os.fspath(path))
