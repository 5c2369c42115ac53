"""The eager explainer: one forward of the backbone, one gradient through the head.

This module is the front class only; the steps live where they belong: the split in
:mod:`explainer.split`, the step sequence in :mod:`explainer.pipeline`, gradients in
:mod:`explainer.gradients`, the methods in :mod:`explainer.methods`, the checks in
:mod:`explainer.checks`, layer layouts in :mod:`explainer.reshape`, smoothing in
:mod:`explainer.smoothing` and what is scored in :mod:`explainer.scoring`.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Self

import torch
from torch import Tensor, nn

from explainer.checks import (
    DeferredChecks,
    check_grad_mode,
    check_input,
    check_method_fits,
    check_output,
    model_device_dtype,
)
from explainer.cuda_graphs import GraphedCalls
from explainer.errors import InputError, MethodError, NonFiniteError
from explainer.explanation import Explanation
from explainer.gradients import score_gradients
from explainer.methods import CamMethod, Probe, get_method
from explainer.methods.base import weighted_sum
from explainer.outputs import OutputKey, select_output
from explainer.pipeline import finish_maps, unpack_backbone
from explainer.reshape import Reshape, as_grid, as_grid_batched, as_reshape
from explainer.scoring import Scorer, Targets, check_one_of, class_index_tensor, make_scorer
from explainer.smoothing import aug_smooth as augmented_mean
from explainer.smoothing import contributions, eigen_smooth
from explainer.split import LayerSpec, LeafSpec, SplitModel, split_model
from explainer.targets import is_target_callable
from explainer.tracing_lock import running

Backbone = Callable[[Tensor], Tensor | Sequence[Tensor]]
Head = Callable[..., Tensor]


class Explainer:
    """Class activation maps for a CNN classifier, without hooks.

    ``Explainer(model, target_layer, method)`` splits ``model`` at ``target_layer``
    with torch.fx (see :mod:`explainer.split`). A call runs the backbone under
    ``torch.no_grad()``, makes the activations the only tensor that requires grad,
    runs the head with grad, and takes ``torch.autograd.grad`` of the target scores
    with respect to the activations: no parameter gradient is ever computed and the
    model is not modified (hooks, flags, ``requires_grad``, parameters).

    Put the model in ``eval()`` mode first: in training mode batch norm mixes the
    images of a batch and dropout is random (a warning says so).

    ``cuda_graphs=True``: calls on CUDA inputs with a gradient or activation method and class
    targets are recorded once per input shape and target form as a CUDA graph and replayed
    afterwards (one launch instead of hundreds: the GPU's launch overhead is what makes small
    batches cost more than inference). The maps are the eager ones; other calls (CPU inputs,
    perturbation methods, target callables, ``eigen_smooth``) run eagerly. See
    :mod:`explainer.cuda_graphs`.

    Example::

        exp = Explainer(model.eval(), "layer4", method="gradcam")
        result = exp(images, targets=None)   # images: (N, 3, H, W) float
        result.cams                          # (N, H, W) in [0, 1]
    """

    def __new__(cls, model: nn.Module | None = None, target_layer: Any = None, *args: Any, **kwargs: Any) -> Self:
        """A list of target layers gives a :class:`~explainer.multilayer.MultiLayerExplainer` (multi-layer CAM:
        the same call and result type, maps combined over the layers)."""
        if cls is Explainer and isinstance(target_layer, (list, tuple)) and isinstance(model, nn.Module):
            from explainer.multilayer import MultiLayerExplainer

            return MultiLayerExplainer(model, target_layer, *args, **kwargs)  # type: ignore[return-value]
        return super().__new__(cls)

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerSpec,
        method: str | CamMethod = "gradcam",
        *,
        leaf_modules: Iterable[LeafSpec] = (),
        batch_size: int | None = None,
        max_channels: int | None = None,
        progress: bool = True,
        output_key: OutputKey = None,
        reshape: str | Reshape | None = None,
        cuda_graphs: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}; use Explainer.from_parts for callables")
        self._setup(method, batch_size, max_channels, progress, output_key, reshape, model=model,
                    target_layer=target_layer, leaf_modules=tuple(leaf_modules), cuda_graphs=cuda_graphs)

    @classmethod
    def from_parts(
        cls,
        backbone: Backbone,
        head: Head,
        method: str | CamMethod = "gradcam",
        *,
        layer: str = "activations",
        in_channels: int | None = None,
        batch_size: int | None = None,
        max_channels: int | None = None,
        progress: bool = True,
        output_key: OutputKey = None,
        reshape: str | Reshape | None = None,
        cuda_graphs: bool = False,
    ) -> Explainer:
        """An explainer from two callables, for models torch.fx cannot trace.

        ``backbone(x) -> activations (N, C, h, w)`` (or a tuple ``(activations, *skips)``)
        and ``head(activations, *skips) -> logits (N, num_classes)`` (or any output with
        target callables / ``output_key``). The head must be differentiable for gradient
        methods and must not modify values the backbone shares with it in place.
        """
        self = cls.__new__(cls)
        self._setup(method, batch_size, max_channels, progress, output_key, reshape, parts=(backbone, head),
                    layer=layer, in_channels=in_channels, cuda_graphs=cuda_graphs)
        return self

    def _setup(self, method: str | CamMethod, batch_size: int | None, max_channels: int | None, progress: bool,
               output_key: OutputKey, reshape: str | Reshape | None, *, model: nn.Module | None = None,
               target_layer: LayerSpec = "", leaf_modules: tuple[LeafSpec, ...] = (),
               parts: tuple[Backbone, Head] | None = None, layer: str = "activations",
               in_channels: int | None = None, cuda_graphs: bool = False) -> None:
        """The one constructor: checks the options, splits ``model`` (or takes ``parts``), checks the method."""
        if not isinstance(progress, bool):
            raise MethodError(f"progress must be True or False, got {progress!r}")
        if not isinstance(cuda_graphs, bool):
            raise MethodError(f"cuda_graphs must be True or False, got {cuda_graphs!r}")
        #: recorded CUDA graphs of whole calls (see explainer.cuda_graphs); None: every call runs eagerly
        self._graphs = GraphedCalls() if cuda_graphs else None
        self._options = {"batch_size": batch_size, "max_channels": max_channels}  # None: the method's own
        self.method = get_method(method).with_options(**self._options)
        self.progress = progress
        self.output_key = output_key
        self.reshape = as_reshape(reshape)
        self._model = model
        self._target_layer = target_layer if model is not None else layer
        self._leaf_modules = leaf_modules
        self._splits: dict[bool, SplitModel] = {}
        self._lock = threading.Lock()
        if parts is None:
            split = self._split_for_mode(stacklevel=4)
            parts, layer, in_channels = (split.backbone, split.head), split.layer, split.in_channels
        self._backbone, self._head = parts
        self.layer = layer
        self._in_channels = in_channels
        check_method_fits(self.method, self._head, self.layer, self.reshape)

    @classmethod
    def from_onnx(cls, source: str | os.PathLike | bytes | Any, target_layer: str | None = None,
                  method: str | CamMethod = "gradcam", *, input_layout: str = "nchw", **options: Any) -> Explainer:
        """An explainer of a model given only as an ONNX file (exported from PyTorch, TensorFlow/Keras, JAX...).

        Args:
            source: a path, the serialized bytes, or an ``onnx.ModelProto``.
            target_layer: a tensor of the graph (a node output) or a node's name (its first output);
                None: the tensor that feeds the last global pooling. Unknown names list close ones;
                ``deploycam layers --onnx FILE`` lists the 4-D tensors.
            method: any method. The graph is converted to PyTorch with onnx2torch (every method,
                gradients included, and both exports); a graph that does not convert still runs the
                gradient-free methods (eigencam, ablationcam, reciprocam, scorecam) in ONNX Runtime.
            input_layout: ``"nchw"``, or ``"nhwc"`` for TensorFlow-style ``(N, H, W, C)`` images.
            options: ``route="auto"|"torch"|"onnxruntime"``, ``providers`` (ONNX Runtime route), and the
                Explainer options (``batch_size``, ``max_channels``, ``progress``, ``output_key``, ``reshape``).

        Calls take numpy arrays or tensors laid out as the model takes them and return the same
        :class:`Explanation` as for a PyTorch model (maps ``(N, H, W)``). Needs ``deploycam[onnx]``.
        """
        from explainer.onnx_import.explainer_onnx import from_onnx

        return from_onnx(source, target_layer, method, input_layout=input_layout, **options)

    @staticmethod
    def for_detector(model: nn.Module, target_layer: str | Sequence[str] = "fpn", method: str | CamMethod = "gradcam",
                     **options: Any):
        """An explainer of a torchvision detector (Faster/Mask/Keypoint R-CNN, RetinaNet, FCOS, SSD, SSDlite).

        ``target_layer``: ``"fpn"`` (every FPN output convolution; SSD: ``"backbone"``, its output maps) or a
        list of ``backbone.fpn.layer_blocks.<i>`` names: multi-layer CAM as pytorch-grad-cam computes it;
        or ``"concat"``: every backbone output level (extra ones included), ``|x|`` resized to the coarsest
        level and concatenated on channels, one map -- pytorch-grad-cam's ``fasterrcnn_reshape_transform``
        on ``model.backbone``, for eigencam. ``options``: ``batch_size`` (detector copies per forward of
        ablationcam / reciprocam, default 8), ``progress`` (their tqdm bar).
        Calls take images ``(N, 3, H, W)`` in [0, 1] and a :class:`~explainer.detection.DetectionTarget`;
        see :class:`~explainer.detection.DetectionExplainer`.
        """
        from explainer.detection.explainer import DetectionExplainer

        return DetectionExplainer(model, target_layer, method, **options)

    #: The layout of the images calls take: ``"nchw"`` here; ONNX models may take ``"nhwc"``.
    input_layout = "nchw"

    def to_nchw(self, x: Tensor) -> Tensor:
        """Images as calls take them -> ``(N, C, H, W)`` (the identity here; see :class:`OnnxExplainer`)."""
        return x

    def with_method(self, method: str | CamMethod) -> Explainer:
        """A new explainer sharing this one's split graphs, with another method (no re-tracing)."""
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other._lock = threading.Lock()
        other._splits = dict(self._splits)
        other._graphs = None if self._graphs is None else self._graphs.empty_copy()  # graphs hold the method
        other.method = get_method(method).with_options(**self._options)
        check_method_fits(other.method, other._head, other.layer, other.reshape)
        return other

    @property
    def batch_size(self) -> int:
        """Perturbed copies per forward of the perturbation methods (an option of :attr:`method`)."""
        return self.method.batch_size

    @property
    def max_channels(self) -> int | None:
        """Score-CAM's channel limit (an option of :attr:`method`; None: all channels)."""
        return self.method.max_channels

    @property
    def backbone(self) -> Backbone:
        """``x (N, C, H, W) -> (activations (N, C', h, w), *skips)``."""
        return self._backbone

    @property
    def head(self) -> Head:
        """``(activations, *skips) -> logits (N, num_classes)``."""
        return self._head

    def _split_for_mode(self, stacklevel: int = 5) -> SplitModel:
        """The split for the model's current train/eval mode (traced on first use of each mode).

        Warns whenever the model is in training mode (at construction, and at each call after
        ``model.train()``; Python shows each warning once per place): a call then updates batch
        norm's running averages, and the model is never changed silently.
        """
        assert self._model is not None
        mode = self._model.training
        if mode:
            warnings.warn(
                f"{type(self._model).__name__} is in training mode: explaining it changes the model "
                "(batch norm uses batch statistics and updates its running averages) and dropout is "
                "random; call model.eval() first",
                stacklevel=stacklevel,
            )
        with self._lock:
            if mode not in self._splits:
                self._splits[mode] = split_model(self._model, self._target_layer, self._leaf_modules)
            return self._splits[mode]

    def _parts(self) -> tuple[Backbone, Head]:
        if self._model is None:
            return self._backbone, self._head
        split = self._split_for_mode()  # traced graphs depend on train/eval mode
        return split.backbone, split.head

    def __call__(self, x: Tensor, targets: Targets = None, *, topk: int | None = None,
                 aug_smooth: bool = False, eigen_smooth: bool = False) -> Explanation:
        """Explain a batch.

        Args:
            x: images ``(N, C, H, W)``, floating, on the model's device, finite.
            targets: None (each image's top class), an int (for all), N ints or a
                ``(N,)`` tensor (one per image), or a ``(N, K)`` tensor / nested list
                (K classes per image, one backbone forward and one batched backward);
                or a target callable ``output (N, ...) -> (N,)`` scores such as
                ``ClassTarget(k)``, ``SegmentationTarget(k, mask)``, ``SimilarityTarget(e)``,
                or N per-image callables in pytorch-grad-cam's convention
                (see :mod:`explainer.targets`).
            topk: instead of ``targets``, explain each image's ``topk`` highest-scoring
                classes (``targets`` becomes ``(N, topk)``, best first).
            aug_smooth: average the maps of 6 augmented copies (horizontal flip x intensity
                0.9/1.0/1.1, as pytorch-grad-cam), each mapped back; targets are fixed from the
                original images (spatial targets flipped with them), logits are the original's.
                Costs 6 calls.
            eigen_smooth: replace the channel sum by the first principal component of the
                per-channel contributions (see :mod:`explainer.smoothing`); no effect on
                eigencam/eigengradcam, which are principal components already.

        Returns:
            An :class:`Explanation`; maps keep a K axis only for ``(N, K)`` targets.
            ``logits`` is the model output (the ``output_key`` entry); ``targets`` holds
            -1 for target callables that are not classes.
        """
        logits, scorer, raw, cams = self._maps(x, targets, topk, eigen_smooth)
        if aug_smooth:
            def maps(images: Tensor, flipped: bool) -> tuple[Tensor, Tensor]:
                _, _, r, c = self._maps(images, scorer.flipped() if flipped else scorer, None, eigen_smooth)
                return r, c

            raw, cams = augmented_mean(maps, x, raw, cams)
        target_idx = scorer.labels(x.shape[0], logits.device)
        if not scorer.keep_k:
            raw, cams, target_idx = raw[:, 0], cams[:, 0], target_idx[:, 0]
        return Explanation(logits, target_idx, raw.detach(), cams.detach(), self.method.name, self.layer)

    explain = __call__

    def _maps(self, x: Tensor, targets: Targets | Scorer, topk: int | None,
              eigen: bool = False) -> tuple[Tensor, Scorer, Tensor, Tensor]:
        """``(output, scorer, raw (N, K, h, w), cams (N, K, H, W))`` for one batch."""
        check_grad_mode()
        backbone, head = self._parts()  # may trace (train/eval switch): before the shared run lock
        with running():
            graphed = self._graphed_maps(backbone, head, x, targets, topk, eigen)
            if graphed is not None:
                return graphed
            return self._run_parts(backbone, head, x, targets, topk, eigen)

    @property
    def cuda_graphs(self) -> bool:
        """Whether calls on CUDA inputs replay recorded CUDA graphs (see :mod:`explainer.cuda_graphs`)."""
        return self._graphs is not None

    def _graphed_maps(self, backbone: Backbone, head: Head, x: Tensor, targets: Targets | Scorer, topk: int | None,
                      eigen: bool) -> tuple[Tensor, Scorer, Tensor, Tensor] | None:
        """:meth:`_run_parts` replayed from a recorded CUDA graph, or None where calls run eagerly: no
        ``cuda_graphs``, inputs not on the graphs' device, a perturbation method (host-side loops),
        ``eigen_smooth``, target callables, a model in training mode, or a signature that could not be
        recorded."""
        graphs = self._graphs
        if (graphs is None or eigen or not self.method.exportable or not isinstance(x, Tensor)
                or x.device.type != graphs.device_type or (self._model is not None and self._model.training)):
            return None
        if isinstance(targets, Scorer):
            if targets.indices is None:
                return None
            given, keep_k = targets.indices, targets.keep_k
        elif targets is None:
            given, keep_k = None, topk is not None
        elif is_target_callable(targets):
            return None
        else:
            check_one_of(targets, topk)
            given, keep_k = class_index_tensor(targets, x.shape[0])
            given = given.to(x.device, torch.long)

        def record(images: Tensor, chosen: Tensor | None) -> tuple[tuple[Tensor, ...], DeferredChecks]:
            checks = DeferredChecks()
            output, scorer, raw, cams = self._run_parts(backbone, head, images, chosen, topk, False, checks)
            return (output, scorer.labels(images.shape[0], images.device), raw, cams), checks

        signature = (tuple(x.shape), x.dtype, x.device, None if given is None else tuple(given.shape), topk,
                     self._weights_address())
        outputs = graphs(signature, record, x, given)
        if outputs is None:
            return None
        output, labels, raw, cams = outputs
        return output, Scorer(labels, None, keep_k), raw, cams

    def _weights_address(self) -> int:
        """The first parameter's address: a moved model or replaced parameters get a new CUDA graph."""
        owner = self._model if self._model is not None else self._head
        first = next(owner.parameters(), None) if isinstance(owner, nn.Module) else None
        return 0 if first is None else first.data_ptr()

    def _select(self, output: object) -> Tensor:
        return select_output(output, self.output_key)

    def _run_parts(self, backbone: Backbone, head: Head, x: Tensor, targets: Targets | Scorer, topk: int | None,
                   eigen: bool, checks: DeferredChecks | None = None) -> tuple[Tensor, Scorer, Tensor, Tensor]:
        """One batch through backbone, head, gradient and method. Value checks are read with one
        synchronisation at the end, or, with ``checks`` (a recorded CUDA graph), left there unread."""
        device, dtype = model_device_dtype(head) if isinstance(head, nn.Module) else (None, None)
        if device is None and isinstance(backbone, nn.Module):
            device, dtype = model_device_dtype(backbone)
        deferred = DeferredChecks() if checks is None else checks  # see explainer.checks
        check_input(x, device, dtype, self._in_channels, deferred)

        image_hw = (x.shape[-2], x.shape[-1])
        layer_out, skips = self._run_backbone(backbone, x)
        activations = as_grid(layer_out, self.reshape, image_hw, self.layer)
        needs_grad = self.method.needs_gradient
        leaf = layer_out.detach().requires_grad_(needs_grad)
        with torch.set_grad_enabled(needs_grad):
            # clone: the head may modify its input in place (DenseNet's ReLU(inplace=True)).
            output = select_output(head(leaf.clone(), *skips), self.output_key)
        check_output(output, x.shape[0], deferred)
        scorer = targets if isinstance(targets, Scorer) else make_scorer(targets, output, topk, deferred)

        weights = perturbed = None
        if not self.method.exportable:  # a perturbation method: re-runs the head or the model
            deferred.verify()  # before the long loop
            probe = Probe.for_parts(backbone, head, skips, x, scorer, scorer.k, self._select, self.method.batch_size,
                                    self.method.max_channels, self.progress, class_scores=scorer.indices is not None)
            if self.method.perturbation is not None:
                weights = self.method.perturbation(activations, probe)
            else:
                assert self.method.perturbation_map is not None
                perturbed = self.method.perturbation_map(activations, probe)
            grads = activations.new_empty(0)
        elif needs_grad:
            with torch.enable_grad():  # the caller may be under no_grad
                scores = scorer(output)
                grads = as_grid_batched(score_gradients(scores, leaf, self._grad_hint()), self.reshape, image_hw)
        else:
            grads = activations.new_empty(0)
        parts = contributions(self.method, activations, grads, weights) if eigen and perturbed is None else None
        if perturbed is not None:
            raw = perturbed
        elif parts is not None:
            raw = eigen_smooth(parts)
        elif weights is not None:
            raw = weighted_sum(weights, activations)
        else:
            raw = self.method.compute(activations, grads)
        raw = raw.expand(-1, scorer.k, -1, -1) if raw.shape[1] != scorer.k else raw
        deferred.add(torch.isfinite(raw).all(), lambda: NonFiniteError(
            f"{self.method.name} produced NaN/inf values at {self.layer!r} (the activations or gradients "
            "overflowed); check the model's weights and dtype"))
        cams = finish_maps(raw, x.shape[-2], x.shape[-1])
        if checks is None:
            deferred.verify()  # the call's one host-device synchronisation, after all its work is queued
        return output.detach(), scorer, raw.detach(), cams.detach()

    def _grad_hint(self) -> str:
        if self._model is None:
            return ("the head given to Explainer.from_parts is not differentiable (it detaches, runs under "
                    "no_grad, or does not use the activations); gradient methods need a differentiable head, "
                    "use eigencam, scorecam or ablationcam otherwise")
        return "the target scores do not depend on the layer's activations through autograd"

    def _run_backbone(self, backbone: Backbone, x: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        try:
            with torch.no_grad():
                out = backbone(x)
        except RuntimeError as exc:
            raise InputError(
                f"the model could not run on an input of shape {tuple(x.shape)} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0]}); check the image size and channels the model expects"
            ) from exc
        return unpack_backbone(out)

    def __repr__(self) -> str:
        return f"Explainer(layer={self.layer!r}, method={self.method.name!r})"
