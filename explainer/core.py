"""The eager explainer: one forward of the backbone, one gradient through the head."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, fx, nn

from explainer.checks import DeferredChecks, check_grad_mode, check_input, model_device_dtype
from explainer.errors import (
    GradModeError,
    InputError,
    LayerShapeError,
    MethodError,
    ModelOutputError,
    NonFiniteError,
)
from explainer.explanation import Explanation
from explainer.gradients import score_gradients
from explainer.head_structure import find_linear_head
from explainer.methods import CamMethod, Probe, get_method
from explainer.methods.base import weighted_sum
from explainer.outputs import OutputKey, select_output
from explainer.postprocess import normalize_maps, upsample_maps
from explainer.reshape import Reshape, as_reshape
from explainer.smoothing import contributions, eigen_smooth
from explainer.split import LayerSpec, LeafSpec, SplitModel, split_model
from explainer.targets import Scorer, Targets, make_scorer
from explainer.tracing_lock import running, tracing

Backbone = Callable[[Tensor], Tensor | Sequence[Tensor]]

#: aug_smooth's augmentations besides the identity: (horizontal flip, intensity factor).
AUGMENTATIONS = ((False, 0.9), (False, 1.1), (True, 0.9), (True, 1.0), (True, 1.1))
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

    Example::

        exp = Explainer(model.eval(), "layer4", method="gradcam")
        result = exp(images, targets=None)   # images: (N, 3, H, W) float
        result.cams                          # (N, H, W) in [0, 1]
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerSpec,
        method: str | CamMethod = "gradcam",
        *,
        leaf_modules: Iterable[LeafSpec] = (),
        batch_size: int = 32,
        max_channels: int | None = None,
        progress: bool = True,
        output_key: OutputKey = None,
        reshape: str | Reshape | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}; use Explainer.from_parts for callables")
        self.method = get_method(method)
        self._set_options(batch_size, max_channels, progress, output_key, reshape)
        self._model: nn.Module | None = model
        self._target_layer = target_layer
        self._leaf_modules = tuple(leaf_modules)
        self._splits: dict[bool, SplitModel] = {}
        self._lock = threading.Lock()
        split = self._split_for_mode(stacklevel=3)
        self._backbone: Backbone = split.backbone
        self._head: Head = split.head
        self.layer = split.layer
        self._in_channels = split.in_channels
        self._check_method_fits(split.head)
        self._check_head_tensors(split.head)

    @classmethod
    def from_parts(
        cls,
        backbone: Backbone,
        head: Head,
        method: str | CamMethod = "gradcam",
        *,
        layer: str = "activations",
        in_channels: int | None = None,
        batch_size: int = 32,
        max_channels: int | None = None,
        progress: bool = True,
        output_key: OutputKey = None,
        reshape: str | Reshape | None = None,
    ) -> Explainer:
        """An explainer from two callables, for models torch.fx cannot trace.

        ``backbone(x) -> activations (N, C, h, w)`` (or a tuple ``(activations, *skips)``)
        and ``head(activations, *skips) -> logits (N, num_classes)`` (or any output with
        target callables / ``output_key``). The head must be differentiable for gradient
        methods and must not modify values the backbone shares with it in place.
        """
        self = cls.__new__(cls)
        self.method = get_method(method)
        self._set_options(batch_size, max_channels, progress, output_key, reshape)
        self._model = None
        self._splits = {}
        self._lock = threading.Lock()
        self._backbone, self._head = backbone, head
        self.layer = layer
        self._in_channels = in_channels
        self._target_layer = layer
        self._leaf_modules = ()
        self._check_method_fits(head)
        self._check_head_tensors(head)
        return self

    def _set_options(self, batch_size: int, max_channels: int | None, progress: bool, output_key: OutputKey,
                     reshape: str | Reshape | None) -> None:
        if not isinstance(progress, bool):
            raise MethodError(f"progress must be True or False, got {progress!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise MethodError(f"batch_size must be an integer >= 1 (perturbed copies per forward), got {batch_size!r}")
        if max_channels is not None and (isinstance(max_channels, bool) or not isinstance(max_channels, int)
                                         or max_channels < 1):
            raise MethodError(f"max_channels must be None (all channels) or an integer >= 1, got {max_channels!r}")
        self.batch_size, self.max_channels, self.progress = batch_size, max_channels, progress
        self.output_key = output_key
        self.reshape = as_reshape(reshape)
        self._check_reshape_fits()

    def _check_reshape_fits(self) -> None:
        if self.reshape is not None and self.method.needs_head_inverse:
            raise MethodError(
                f"{self.method.name!r} feeds changed activations back to the head, which reads the layer's own "
                "layout, so it cannot run through reshape=; use a gradient method or 'scorecam'"
            )

    def with_method(self, method: str | CamMethod) -> Explainer:
        """A new explainer sharing this one's split graphs, with another method (no re-tracing)."""
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other._lock = threading.Lock()
        other._splits = dict(self._splits)
        other.method = get_method(method)
        other._check_reshape_fits()
        other._check_method_fits(other._head)
        other._check_head_tensors(other._head)
        return other

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

    def _check_head_tensors(self, head: Head) -> None:
        if not isinstance(head, nn.Module):
            return
        frozen = [name for name, t in list(head.named_parameters()) + list(head.named_buffers()) if t.is_inference()]
        if frozen and self.method.needs_gradient:
            raise GradModeError(
                f"the model's tensors after {self.layer!r} ({', '.join(frozen[:3])}...) were created under "
                "torch.inference_mode, and autograd cannot differentiate through them; build or load the "
                "model outside inference_mode (torch.no_grad() is fine)"
            )

    def _check_method_fits(self, head: Head) -> None:
        if not self.method.requires_linear_head:
            return
        graph = head if isinstance(head, fx.GraphModule) else None
        if graph is None and isinstance(head, nn.Module):
            try:
                with tracing():
                    graph = fx.symbolic_trace(head)
            except Exception:  # noqa: BLE001 - any tracing failure means "cannot verify"
                graph = None
        if graph is None:
            raise MethodError(f"{self.method.name!r} needs a head it can inspect (an nn.Module torch.fx can trace)")
        linear, reason = find_linear_head(graph)
        if linear is None:
            raise MethodError(
                f"{self.method.name!r} is only defined for heads that are global average pooling + one linear "
                f"layer, and at {self.layer!r} {reason}; use 'gradcam' (identical for such heads) or pick the "
                "layer right before the pooling"
            )

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
                (see :mod:`explainer.target_functions`).
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
            raws, all_cams = [raw], [cams]
            for flip, factor in AUGMENTATIONS:
                augmented = x * factor
                _, _, r, c = self._maps(augmented.flip(-1) if flip else augmented,
                                        scorer.flipped() if flip else scorer, None, eigen_smooth)
                raws.append(r.flip(-1) if flip else r)
                all_cams.append(c.flip(-1) if flip else c)
            raw, cams = torch.stack(raws).mean(0), torch.stack(all_cams).mean(0)
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
            return self._run_parts(backbone, head, x, targets, topk, eigen)

    def _run_parts(self, backbone: Backbone, head: Head, x: Tensor, targets: Targets | Scorer, topk: int | None,
                   eigen: bool) -> tuple[Tensor, Scorer, Tensor, Tensor]:
        device, dtype = model_device_dtype(head) if isinstance(head, nn.Module) else (None, None)
        if device is None and isinstance(backbone, nn.Module):
            device, dtype = model_device_dtype(backbone)
        deferred = DeferredChecks()  # value checks, read with one sync at the end (see explainer.checks)
        check_input(x, device, dtype, self._in_channels, deferred)

        layer_out, skips = self._run_backbone(backbone, x)
        activations = self._as_grid(layer_out, x)
        needs_grad = self.method.needs_gradient
        leaf = layer_out.detach().requires_grad_(needs_grad)
        with torch.set_grad_enabled(needs_grad):
            # clone: the head may modify its input in place (DenseNet's ReLU(inplace=True)).
            output = select_output(head(leaf.clone(), *skips), self.output_key)
        _check_output(output, x.shape[0], deferred)
        scorer = targets if isinstance(targets, Scorer) else make_scorer(targets, output, topk, deferred)

        weights = None
        if self.method.perturbation is not None:
            deferred.verify()  # before the long loop
            weights = self.method.perturbation(activations, self._probe(backbone, head, skips, x, scorer))
            grads = activations.new_empty(0)
        elif needs_grad:
            with torch.enable_grad():  # the caller may be under no_grad
                scores = scorer(output)
                grads = self._as_grid_batched(score_gradients(scores, leaf, self._grad_hint()), x)
        else:
            grads = activations.new_empty(0)
        parts = contributions(self.method, activations, grads, weights) if eigen else None
        if parts is not None:
            raw = eigen_smooth(parts)
        elif weights is not None:
            raw = weighted_sum(weights, activations)
        else:
            raw = self.method.compute(activations, grads)
        raw = raw.expand(-1, scorer.k, -1, -1) if raw.shape[1] != scorer.k else raw
        deferred.add(torch.isfinite(raw).all(), lambda: NonFiniteError(
            f"{self.method.name} produced NaN/inf values at {self.layer!r} (the activations or gradients "
            "overflowed); check the model's weights and dtype"))
        cams = upsample_maps(normalize_maps(raw), x.shape[-2], x.shape[-1])
        deferred.verify()  # the call's one host-device synchronisation, after all its work is queued
        return output.detach(), scorer, raw.detach(), cams.detach()

    def _grad_hint(self) -> str:
        if self._model is None:
            return ("the head given to Explainer.from_parts is not differentiable (it detaches, runs under "
                    "no_grad, or does not use the activations); gradient methods need a differentiable head, "
                    "use eigencam, scorecam or ablationcam otherwise")
        return "the target scores do not depend on the layer's activations through autograd"

    def _as_grid(self, layer_out: Tensor, x: Tensor) -> Tensor:
        """The layer output as ``(N, C, h, w)`` (through ``reshape``), with clear errors."""
        grid = layer_out if self.reshape is None else self.reshape(layer_out, (x.shape[-2], x.shape[-1]))
        if not isinstance(grid, Tensor) or grid.ndim != 4 or grid.shape[0] != x.shape[0]:
            shape = tuple(grid.shape) if isinstance(grid, Tensor) else type(grid).__name__
            raise LayerShapeError(
                f"layer {self.layer!r} outputs {shape}, not a spatial (N, C, h, w) map; pick a convolutional "
                "layer, or pass reshape= for token layers of vision transformers ('tokens' for (N, tokens, C), "
                "'channels_last' for Swin's (N, h, w, C))"
                if self.reshape is None else
                f"reshape turned layer {self.layer!r}'s output {tuple(layer_out.shape)} into {shape}, "
                f"not (N={x.shape[0]}, C, h, w)"
            )
        if grid.shape[-2] * grid.shape[-1] == 1:
            raise LayerShapeError(
                f"layer {self.layer!r} outputs {tuple(grid.shape)}: a 1x1 map has no spatial "
                "extent to explain; pick an earlier layer (or a larger input)"
            )
        if self.reshape is None and grid.shape[1] == grid.shape[2] and grid.shape[3] > 4 * grid.shape[1]:
            warnings.warn(
                f"layer {self.layer!r} outputs {tuple(grid.shape)}, which looks channels-last (N, h, w, C) "
                "(Swin); if so pass reshape='channels_last'", stacklevel=4,
            )
        return grid

    def _as_grid_batched(self, grads: Tensor, x: Tensor) -> Tensor:
        """Gradients ``(N, K, *layer shape)`` -> ``(N, K, C, h, w)``."""
        if self.reshape is None:
            return grads
        n, k = grads.shape[:2]
        grid = self.reshape(grads.flatten(0, 1), (x.shape[-2], x.shape[-1]))
        return grid.reshape(n, k, *grid.shape[1:])

    def _probe(self, backbone: Backbone, head: Head, skips: tuple, x: Tensor, scorer: Scorer) -> Probe:
        key = self.output_key

        def model(images: Tensor) -> Tensor:
            out = backbone(images)
            a, *extra = (out,) if isinstance(out, Tensor) else tuple(out)
            return select_output(head(a, *extra), key)

        def head_on_copy(a: Tensor, *extra: Tensor) -> Tensor:
            return select_output(head(a.clone(), *extra), key)  # the head may modify its input in place

        return Probe(head_on_copy, skips, model, scorer, scorer.k, x, self.batch_size, self.max_channels,
                     self.progress)

    def _run_backbone(self, backbone: Backbone, x: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        try:
            with torch.no_grad():
                out = backbone(x)
        except RuntimeError as exc:
            raise InputError(
                f"the model could not run on an input of shape {tuple(x.shape)} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0]}); check the image size and channels the model expects"
            ) from exc
        activations, *skips = (out,) if isinstance(out, Tensor) else tuple(out)
        if not isinstance(activations, Tensor):
            raise LayerShapeError(f"layer {self.layer!r} outputs {type(activations).__name__}, not a tensor")
        return activations, tuple(skips)

    def __repr__(self) -> str:
        return f"Explainer(layer={self.layer!r}, method={self.method.name!r})"


def _check_output(output: Tensor, n: int, deferred: DeferredChecks) -> None:
    if output.ndim < 2 or output.shape[0] != n:
        raise ModelOutputError(
            f"the model returned {tuple(output.shape)}; the explainer needs an output with the batch first, "
            f"(N={n}, num_classes) logits or (N={n}, ...) for target callables"
        )
    deferred.add(torch.isfinite(output).all(),
                 lambda: NonFiniteError("the model produced NaN or inf outputs (logits) for this input"))
