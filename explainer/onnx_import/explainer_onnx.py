"""``Explainer.from_onnx``: the Grad-CAM family on a model given only as an ONNX file.

Route 1 (every method): the graph, normalised (:mod:`~explainer.onnx_import.normalise`), is
converted to PyTorch by onnx2torch and explained like any model: split at the target tensor, the
gradient taken with autograd, the same exports. Route 2 (graphs onnx2torch cannot convert):
gradient-free methods (eigencam, ablationcam, reciprocam, scorecam) run on the file itself in ONNX
Runtime (:mod:`~explainer.onnx_import.ort_parts`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor

from explainer.core import Explainer
from explainer.errors import InputError, LayerShapeError, MethodError, OnnxModelError
from explainer.explanation import Explanation
from explainer.methods import CamMethod, get_method
from explainer.onnx_import.convert import as_batch, check_layout, input_shape, read_model, to_torch
from explainer.onnx_import.graph_layers import GraphTensor, default_tensor, resolve, spatial_tensors
from explainer.onnx_import.normalise import normalise

ROUTES = ("auto", "torch", "onnxruntime")


def gradient_free_methods() -> tuple[str, ...]:
    """Methods that run on an ONNX file through ONNX Runtime alone (no gradient, no linear head)."""
    from explainer.methods import METHODS

    return tuple(n for n, m in METHODS.items() if not m.needs_gradient and not m.requires_linear_head)


class OnnxExplainer(Explainer):
    """An :class:`~explainer.Explainer` of an ONNX model (see :meth:`Explainer.from_onnx`).

    Calls take images as the model takes them: ``(N, C, H, W)``, or ``(N, H, W, C)`` for
    ``input_layout="nhwc"``; numpy arrays or tensors (float32). Maps are ``(N, H, W)``.

    Attributes:
        input_layout: ``"nchw"`` or ``"nhwc"``.
        tensor: the explained :class:`~explainer.onnx_import.graph_layers.GraphTensor`.
        route: ``"torch"`` (converted by onnx2torch: every method) or ``"onnxruntime"``
            (the file split into two ONNX Runtime sessions: gradient-free methods).
        model: ``images (N, C, H, W) -> output``, for the metrics (:mod:`explainer.metrics`).
        image_size: ``(H, W)`` when the file fixes the input size, else None.
        fixed_batch: None when the graph runs any batch (the usual case: :mod:`~explainer.onnx_import.normalise`
            frees a batch that exporters fix in ``Reshape`` shapes); else the only batch size it runs
            (e.g. the dynamo exporter's ``as_strided`` decomposition indexes the batch-1 elements).
            Calls are then split into chunks, and perturbation methods re-run one copy at a time.
    """

    input_layout: str
    tensor: GraphTensor
    route: str
    model: Any
    image_size: tuple[int, int] | None
    fixed_batch: int | None

    def to_nchw(self, x: Tensor | Any) -> Tensor:
        """Images in the model's layout (numpy or tensor) -> an ``(N, C, H, W)`` float32 tensor."""
        x = as_batch(x, self.input_layout)
        if isinstance(x, Tensor) and x.dtype != torch.float32:
            raise InputError(f"the ONNX model takes float32 images; got {x.dtype} (convert with .astype(np.float32))")
        return x

    def __call__(self, x, targets=None, *, topk=None, aug_smooth=False, eigen_smooth=False):
        """Explain images given in the model's own layout; see :meth:`Explainer.__call__`.

        Graphs whose exporter baked the batch size in (see :attr:`fixed_batch`) are run on chunks of
        that size, and the results joined.
        """
        x = self.to_nchw(x)
        options = {"topk": topk, "aug_smooth": aug_smooth, "eigen_smooth": eigen_smooth}
        step = self.fixed_batch
        if step is None or not isinstance(x, Tensor) or x.ndim != 4 or x.shape[0] == step:
            return Explainer.__call__(self, x, targets, **options)
        n = x.shape[0]
        if n % step:
            raise InputError(f"this ONNX file only runs batches of {step} (its exporter fixed the batch size "
                             f"inside the graph); got {n} images: give a multiple of {step}")
        parts = [Explainer.__call__(self, x[i:i + step], _chunk(targets, i, step, n), **options)
                 for i in range(0, n, step)]
        first = parts[0]
        return Explanation(torch.cat([p.logits for p in parts]), torch.cat([p.targets for p in parts]),
                           None if first.raw is None else torch.cat([p.raw for p in parts]),  # type: ignore[misc]
                           torch.cat([p.cams for p in parts]), first.method, first.layer)

    explain = __call__

    def with_method(self, method: str | CamMethod) -> Explainer:
        """A new explainer with another method (no re-conversion); the ONNX Runtime route takes only
        gradient-free methods (:class:`OnnxModelError` otherwise)."""
        chosen = get_method(method)
        if self.route == "onnxruntime" and (chosen.needs_gradient or chosen.requires_linear_head):
            raise OnnxModelError(_route_error(chosen))
        return super().with_method(chosen)

    def __repr__(self) -> str:
        return f"OnnxExplainer(tensor={self.layer!r}, method={self.method.name!r}, route={self.route!r})"


def from_onnx(source: str | os.PathLike | onnx.ModelProto | bytes, target_layer: str | None = None,
              method: str | CamMethod = "gradcam", *, input_layout: str = "nchw", route: str = "auto",
              providers: Sequence[str] | None = None, **options: Any) -> OnnxExplainer:
    """See :meth:`explainer.Explainer.from_onnx`."""
    layout = check_layout(input_layout)
    if route not in ROUTES:
        raise OnnxModelError(f"route must be one of {', '.join(ROUTES)}, got {route!r}")
    chosen = get_method(method)
    original = read_model(source)
    model = normalise(original)
    tensors = spatial_tensors(model)
    tensor = default_tensor(model, tensors) if target_layer is None else resolve(model, str(target_layer), tensors)
    if tensor.layout == "nhwc" and options.get("reshape") is None:
        options["reshape"] = "channels_last"
    if route != "onnxruntime":
        try:
            converted = to_torch(model, layout)
        except OnnxModelError as exc:
            if route == "torch" or chosen.needs_gradient or chosen.requires_linear_head:
                raise OnnxModelError(
                    f"{exc}. Gradient methods need the graph in PyTorch; these methods work on the file "
                    f"through ONNX Runtime: {', '.join(gradient_free_methods())} "
                    "(Explainer.from_onnx(path, method='eigencam'))") from exc
        else:
            if tensor.output != 0:
                raise LayerShapeError(f"{tensor.name!r} is output {tensor.output} of node {tensor.node!r}; "
                                      "pick a tensor that is a node's first output")
            exp = OnnxExplainer.__new__(OnnxExplainer)
            exp._setup(chosen, options.pop("batch_size", None), options.pop("max_channels", None),
                       options.pop("progress", True), options.pop("output_key", None), options.pop("reshape", None),
                       model=converted.module, target_layer=converted.node_paths[tensor.index],
                       leaf_modules=tuple(options.pop("leaf_modules", ())), cuda_graphs=options.pop("cuda_graphs", False))
            _check_no_options(options)
            return _finish(exp, original, layout, tensor, "torch", converted.module)
    if chosen.needs_gradient or chosen.requires_linear_head:
        raise OnnxModelError(_route_error(chosen))
    from explainer.onnx_import.ort_parts import onnxruntime_parts

    if options.pop("cuda_graphs", False):
        raise MethodError("cuda_graphs records PyTorch calls, and this graph runs in ONNX Runtime (route='onnxruntime'); "
                          "export the explanation and load it with export.load(path, device='cuda', cuda_graph=True)")
    backbone, head, whole = onnxruntime_parts(model, tensor, layout, providers)
    exp = OnnxExplainer.__new__(OnnxExplainer)
    exp._setup(chosen, options.pop("batch_size", None), options.pop("max_channels", None),
               options.pop("progress", True), options.pop("output_key", None), options.pop("reshape", None),
               parts=(backbone, head), layer=tensor.name)  # type: ignore[arg-type]
    _check_no_options(options)
    return _finish(exp, original, layout, tensor, "onnxruntime", whole)


def _route_error(method: CamMethod) -> str:
    return (f"{method.name} needs the gradient (or the linear head) of the graph in PyTorch, which the ONNX Runtime "
            f"route does not have; use one of {', '.join(gradient_free_methods())}")


def _finish(exp: OnnxExplainer, source: onnx.ModelProto, layout: str, tensor: GraphTensor, route: str,
            model: Any) -> OnnxExplainer:
    exp.layer = tensor.name  # messages and results name the ONNX tensor, not onnx2torch's module path
    exp.input_layout, exp.tensor, exp.route, exp.model = layout, tensor, route, model
    shape = input_shape(source)
    h, w = ((shape[2], shape[3]) if layout == "nchw" else (shape[1], shape[2])) if len(shape) == 4 else (None, None)
    exp.image_size = (h, w) if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 else None
    batch = shape[0] if len(shape) == 4 and isinstance(shape[0], int) and shape[0] > 0 else None
    exp.fixed_batch = None if batch is None or _runs_any_batch(model, shape, layout, batch) else batch
    if exp.fixed_batch is not None:
        exp._options = {**exp._options, "batch_size": exp.fixed_batch}
        exp.method = exp.method.with_options(batch_size=exp.fixed_batch)
    return exp


def _runs_any_batch(model: Any, shape: tuple, layout: str, batch: int) -> bool:
    """Whether a graph exported for ``batch`` images runs other batches with the same per-image results
    (tried on random images: batch+1 at once against one at a time when ``batch`` is 1)."""
    dims = shape[1:] if layout == "nchw" else (shape[3], shape[1], shape[2])
    if not all(isinstance(d, int) and d > 0 for d in dims):
        return True  # nothing to try it on; the exporter left the sizes free, so probably the batch too
    x = torch.randn(batch + 1, *dims, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            together = _first_output(model(x))
            if batch != 1:
                return together.shape[0] == batch + 1
            alone = torch.cat([_first_output(model(x[i:i + 1])) for i in range(2)])
    except Exception:  # noqa: BLE001 - any failure on another batch means the batch is fixed
        return False
    scale = float(alone.abs().max()) or 1.0
    return together.shape == alone.shape and float((together - alone).abs().max()) <= 1e-4 * scale


def _first_output(out: Any) -> Tensor:
    return out if isinstance(out, Tensor) else out[0]


def _chunk(targets: Any, start: int, step: int, n: int) -> Any:
    """The targets of images ``start:start + step`` (per-image sequences and tensors are sliced)."""
    if isinstance(targets, (Tensor, np.ndarray)) and targets.ndim >= 1 and len(targets) == n:
        return targets[start:start + step]
    if isinstance(targets, (list, tuple)) and len(targets) == n:
        return targets[start:start + step]
    return targets


def _check_no_options(options: dict) -> None:
    if options:
        raise TypeError(f"Explainer.from_onnx got unexpected options: {', '.join(sorted(options))}")


__all__ = ["OnnxExplainer", "from_onnx", "gradient_free_methods"]
