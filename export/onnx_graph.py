"""ONNX export of the explanation, gradient included.

No ONNX exporter accepts ``torch.autograd.grad`` (nor ``torch.func.grad``) inside
``forward``. What works: trace the head's gradient *first* with ``make_fx`` and the
decompositions of :mod:`export.decompositions`, which leaves a plain forward graph
of ATen ops (transposed convolutions in place of convolution backward), then export
that graph with ``torch.onnx.export(..., dynamo=True)``. Heads that are global
average pooling + one linear layer skip the tracing: their gradient is exactly
``W[target] / (h w)`` at every position.

The graph's inputs are ``input`` (or ``activations``) and ``target`` ``(N,)`` int64,
both real graph inputs (no initializer default: engines such as OpenVINO and OpenCV's
DNN fold initializers into constants). A negative entry means "this image's argmax";
:func:`export.load`'s runtime passes ``-1`` for callers who give no target. An
out-of-range target selects no class and gives an all-zero map, whichever gradient
step the graph uses; :func:`export.load`'s runtime checks targets before running the graph.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re
import warnings
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.export import Dim
from torch.fx.experimental.proxy_tensor import make_fx

from explainer.core import Explainer
from explainer.errors import ExportError
from explainer.gradients import one_hot_target
from explainer.head_structure import find_linear_head, is_adaptive_global_pool
from explainer.tracing_lock import tracing
from export.decompositions import gradient_decompositions
from export.engine_patterns import engine_safe
from export.graph import AnalyticStep, ExplanationGraph, TracedStep, forward_step
from export.parts import (
    AsTuple,
    GraphInfo,
    check_destination,
    export_parts,
    head_caller,
    method_module,
    model_layout_input,
)

METADATA_KEY = "deploycam"
#: Opsets the dynamo exporter of torch 2.14 writes natively (below 18 it would convert and may silently stay at 18).
SUPPORTED_OPSETS = range(18, 24)


def _linear_parts(head: fx.GraphModule, node: fx.Node) -> tuple[Any, Any, Any] | None:
    """``(input, weight, bias)`` of an ``nn.Linear`` call or ``F.linear`` node, else None."""
    if node.op == "call_module" and isinstance(head.get_submodule(str(node.target)), nn.Linear):
        return node.args[0], f"{node.target}.weight", (
            f"{node.target}.bias" if head.get_submodule(str(node.target)).bias is not None else None)
    if node.op == "call_function" and node.target is torch.nn.functional.linear:
        args = list(node.args) + [None] * 3
        return args[0], node.kwargs.get("weight", args[1]), node.kwargs.get("bias", args[2])
    return None


def onnx_friendly_head(head: nn.Module) -> nn.Module:
    """A copy of an fx head with two same-math rewrites that keep the traced gradient exportable.

    * ``AdaptiveAvgPool2d(1)`` -> ``mean(dim=(-2, -1), keepdim=True)``: the pooling op's own
      decomposition leaves ``as_strided`` views whose gradient (``as_strided_scatter``) has no
      ONNX operator (ConvNeXt's head hits it).
    * ``Linear`` -> ``matmul(x, W.T) + b``: ``linear`` on an ``(N, tokens, C)`` input flattens
      it with concrete sizes, which pins the batch to the example's (a silently static batch:
      EfficientFormer-style heads); ``matmul`` keeps it symbolic.

    The model's modules are shared, not copied; heads without either pass through unchanged.
    """
    if not isinstance(head, fx.GraphModule):
        return head
    graph = copy.deepcopy(head.graph)
    changed = False
    for node in list(graph.nodes):
        replacement = None
        if is_adaptive_global_pool(node, head):
            with graph.inserting_before(node):
                replacement = graph.call_method("mean", (node.args[0],), {"dim": (-2, -1), "keepdim": True})
        elif (parts := _linear_parts(head, node)) is not None:
            x, weight, bias = parts
            with graph.inserting_before(node):
                w = graph.get_attr(weight) if isinstance(weight, str) else weight
                product = graph.call_function(torch.matmul, (x, graph.call_method("t", (w,))))
                b = graph.get_attr(bias) if isinstance(bias, str) else bias
                replacement = product if b is None else graph.call_function(torch.add, (product, b))
        if replacement is not None:
            node.replace_all_uses_with(replacement)
            graph.erase_node(node)
            changed = True
    if not changed:
        return head
    graph.lint()
    return fx.GraphModule(head, graph, class_name="OnnxHead")


def trace_gradient_step(head: nn.Module, activations: Tensor, target: Tensor, skips: tuple[Tensor, ...],
                        dynamic_batch: bool = True) -> fx.GraphModule:
    """``(activations, target, *skips) -> (logits, d logit[target] / d activations)`` as a forward-only fx graph."""

    def step(a: Tensor, t: Tensor, *extra: Tensor):
        def score(leaf: Tensor):
            logits = head(leaf.clone(), *extra)
            return (logits * one_hot_target(logits, t)).sum(), logits

        grads, logits = torch.func.grad(score, has_aux=True)(a)
        return logits, grads

    try:
        traced = make_fx(step, decomposition_table=gradient_decompositions(), tracing_mode="symbolic",
                         _allow_non_fake_inputs=True)(activations, target, *skips)
    except Exception as exc:  # noqa: BLE001 - tracing failures come in many types
        raise ExportError(f"could not trace the head's gradient for ONNX: {type(exc).__name__}: {exc}") from exc
    if dynamic_batch:
        _check_batch_symbolic(traced, int(activations.shape[0]))
    return traced


def _check_batch_symbolic(traced: fx.GraphModule, example_batch: int) -> None:
    """Raise :class:`ExportError` when tracing pinned the batch size (a guard ``Eq(batch, n)``)."""
    first = next(n for n in traced.graph.nodes if n.op == "placeholder")
    size = first.meta["val"].shape[0] if "val" in first.meta else None
    if isinstance(size, torch.SymInt):
        shape_env = getattr(traced, "shape_env", None)
        expr = shape_env.simplify(size.node.expr) if shape_env is not None else size.node.expr
        if not getattr(expr, "is_number", False):
            return
    raise ExportError(
        f"the head's gradient only traces for a fixed batch of {example_batch} (an operation in the head "
        "reads the batch size as a constant); export with dynamic_batch=False (--static-batch), or export "
        "to TorchScript, whose graphs take any batch"
    )


def build_onnx_module(explainer: Explainer, example_input: Tensor, part: str = "full",
                      dynamic_batch: bool = True) -> tuple[nn.Module, tuple[Tensor, Tensor], GraphInfo]:
    """The module to export, example arguments, and metadata.

    With ``dynamic_batch`` the example batch is replaced by one >= 2 that differs from every
    feature size (a batch of 1 is specialised, and make_fx gives equal sizes one symbol, so
    fixing h would fix the batch with it); without, the example's own batch is the graph's.
    """
    if not hasattr(explainer, "to_nchw"):  # a DetectionExplainer (or anything else that is no classifier explainer)
        raise ExportError(f"no ONNX or AOTInductor graph for a {type(explainer).__name__} yet: detector explanations "
                          "export to TorchScript (export.to_torchscript, torchvision detectors); see the README's "
                          "'Explain a detector' for why ONNX is not available")
    example_input = explainer.to_nchw(example_input)
    parts = export_parts(explainer, example_input, part, "onnx")
    sizes = set(parts.activations.shape[1:]) | set(example_input.shape[1:])
    batch = next(b for b in range(2, 64) if b not in sizes) if dynamic_batch else example_input.shape[0]
    if example_input.shape[0] != batch:
        example_input = example_input[:1].expand(batch, -1, -1, -1).contiguous()
        parts = export_parts(explainer, example_input, part, "onnx")
    target = torch.zeros(parts.activations.shape[0], dtype=torch.long, device=parts.activations.device)
    linear = None if parts.skips else find_linear_head(parts.head)[0] if isinstance(parts.head, fx.GraphModule) else None
    n_packed = 1 + (len(parts.skips) if part == "full" else 0)
    if not parts.method.needs_gradient:
        step: nn.Module = forward_step(head_caller(parts.head, n_packed), n_packed)
    elif linear is not None:
        step = AnalyticStep(parts.head, linear.weight)
    else:
        step = TracedStep(trace_gradient_step(onnx_friendly_head(parts.head), parts.activations, target, parts.skips,
                                              dynamic_batch))
    backbone = parts.backbone if part == "full" else AsTuple()
    # the gradient is already inside the traced step: the exported graph itself runs forward only
    module: nn.Module = ExplanationGraph(backbone, step, method_module(parts.method), needs_gradient=False,
                              upsample=part == "full")
    object.__setattr__(module, "training", False)
    first = example_input if part == "full" else parts.activations
    module, first = model_layout_input(module, parts.info, first)
    return module, (first, target), parts.info


def to_onnx(explainer: Explainer, path: str | os.PathLike, example_input: Tensor, part: str = "full",
            opset: int | None = None, dynamic_batch: bool = True, *, targets: str = "detections",
            max_boxes: int = 10, score_threshold: float | None = None) -> Any:
    """Export the explanation to an ONNX file that needs no custom operator.

    A YOLO detector's explainer (:meth:`Explainer.for_detector`) exports through
    :func:`export.detector_onnx.detector_to_onnx` (``targets``, ``max_boxes``, ``score_threshold`` are its
    options; ``part`` and ``dynamic_batch`` do not apply) and returns its ``DetectorOnnxInfo``.

    Args:
        explainer: an eval-mode :class:`~explainer.Explainer` with a gradient or activation method.
        path: output ``.onnx`` file (weights inside it, no ``.onnx.data``); its folder must exist.
        example_input: image batch ``(N, 3, H, W)`` float, as the model takes it; the graph's spatial
            size is fixed to ``H x W`` (and its batch to ``N`` when ``dynamic_batch`` is False).
        part: ``"full"``: ``input`` image -> ``logits``, ``cam (N, H, W)``; ``"head"``:
            ``activations (N, C, h, w)`` -> ``logits``, ``cam (N, h, w)`` (min-max normalised).
        opset: ONNX opset, 18 to 23 (None: the exporter's default); others raise :class:`ExportError`.
        dynamic_batch: keep the batch axis symbolic (named ``batch``); a head that fixes the batch
            raises :class:`ExportError` instead of writing a silently static graph.

    Both ``input`` and ``target`` ``(N,)`` int64 are graph inputs (negative target: argmax).
    Returns the :class:`GraphInfo` stored in the file's metadata under ``deploycam``.
    """
    import onnx

    from explainer.detection.explainer import DetectionExplainer

    if isinstance(explainer, DetectionExplainer):
        from export.detector_onnx import detector_to_onnx

        if part != "full" or not dynamic_batch:
            raise ExportError("a detector explanation exports as one graph from the images with a dynamic batch "
                              "(part='full', dynamic_batch=True)")
        return detector_to_onnx(explainer, path, example_input, targets, max_boxes, score_threshold, opset)
    if opset is not None and (isinstance(opset, bool) or opset not in SUPPORTED_OPSETS):
        raise ExportError(f"opset must be between {SUPPORTED_OPSETS[0]} and {SUPPORTED_OPSETS[-1]} (what "
                          f"torch's exporter writes natively), got {opset!r}")
    check_destination(path)
    with tracing():  # make_fx and the exporter patch nn.Module.__call__ process-wide while they trace
        module, args, info = build_onnx_module(explainer, example_input, part, dynamic_batch)
        first_name = "input" if part == "full" else "activations"
        batch = Dim("batch", min=1)
        dynamic = ({0: batch}, {0: batch}) if dynamic_batch else None
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                # input and target share the batch axis on purpose; the exporter warns that it keeps one name
                warnings.filterwarnings("ignore", message=r".*axis name: batch will not be used")
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
    if program is None:  # pragma: no cover - the dynamo exporter always returns a program
        raise ExportError("torch.onnx.export returned no program")
    model = engine_safe(program.model_proto)
    _check_batch_axis(model, dynamic_batch, int(args[0].shape[0]))
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info.to_json()
    onnx.checker.check_model(model)
    onnx.save_model(model, os.fspath(path))
    return info


def _check_batch_axis(model, dynamic_batch: bool, batch: int) -> None:
    """Every graph input and output has the batch axis the caller asked for (symbolic, or ``batch``)."""
    for value in list(model.graph.input) + list(model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        symbolic = dim.HasField("dim_param") and not dim.HasField("dim_value")
        if dynamic_batch and not symbolic:
            raise ExportError(f"the exported graph's {value.name!r} has a fixed batch of {dim.dim_value}, not a "
                              "dynamic one; export with dynamic_batch=False, or to TorchScript")
        if not dynamic_batch and dim.dim_value != batch:
            raise ExportError(f"the exported graph's {value.name!r} has batch {dim.dim_param or dim.dim_value}, "
                              f"not the example's {batch}")


def model_to_onnx(model: nn.Module, path: str | os.PathLike, example_input: Tensor, dynamic_batch: bool = True) -> None:
    """Export the plain model (image -> logits, no explanation) to ONNX: the floor to compare against."""
    if example_input.shape[0] < 2:
        example_input = example_input.expand(2, -1, -1, -1).contiguous()
    dynamic = ({0: Dim("batch", min=1)},) if dynamic_batch else None
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(model, (example_input,), dynamo=True, input_names=["input"],
                                    output_names=["logits"], dynamic_shapes=dynamic, external_data=False)
    if program is None:  # pragma: no cover - the dynamo exporter always returns a program
        raise ExportError("torch.onnx.export returned no program")
    import onnx

    onnx.save_model(engine_safe(program.model_proto), os.fspath(path))
