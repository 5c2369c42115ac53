"""The eager explainer: one forward of the backbone, one gradient through the head."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, fx, nn

from explainer.checks import check_grad_mode, check_input, model_device_dtype
from explainer.errors import (
    GradModeError,
    InputError,
    LayerShapeError,
    MethodError,
    ModelOutputError,
    NonFiniteError,
    TargetError,
)
from explainer.explanation import Explanation
from explainer.gradients import target_gradients
from explainer.head_structure import find_linear_head
from explainer.methods import CamMethod, Probe, get_method
from explainer.methods.base import weighted_sum
from explainer.postprocess import normalize_maps, upsample_maps
from explainer.smoothing import contributions, eigen_smooth
from explainer.split import LayerSpec, LeafSpec, SplitModel, split_model
from explainer.targets import Targets, resolve_targets

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
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}; use Explainer.from_parts for callables")
        self.method = get_method(method)
        self._set_options(batch_size, max_channels, progress)
        self._model: nn.Module | None = model
        self._target_layer = target_layer
        self._leaf_modules = tuple(leaf_modules)
        self._splits: dict[bool, SplitModel] = {}
        self._lock = threading.Lock()
        split = self._split_for_mode()
        self._backbone: Backbone = split.backbone
        self._head: Head = split.head
        self.layer = split.layer
        self._in_channels = split.in_channels
        if model.training:
            warnings.warn(
                f"{type(model).__name__} is in training mode: batch norm will use batch statistics "
                "(and update its running averages) and dropout is random; call model.eval() first",
                stacklevel=2,
            )
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
    ) -> Explainer:
        """An explainer from two callables, for models torch.fx cannot trace.

        ``backbone(x) -> activations (N, C, h, w)`` (or a tuple ``(activations, *skips)``)
        and ``head(activations, *skips) -> logits (N, num_classes)``. The head must be
        differentiable for gradient methods and must not modify values the backbone
        shares with it in place.
        """
        self = cls.__new__(cls)
        self.method = get_method(method)
        self._set_options(batch_size, max_channels, progress)
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

    def _set_options(self, batch_size: int, max_channels: int | None, progress: bool) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise MethodError(f"batch_size must be an integer >= 1 (perturbed copies per forward), got {batch_size!r}")
        if max_channels is not None and (not isinstance(max_channels, int) or max_channels < 1):
            raise MethodError(f"max_channels must be None (all channels) or an integer >= 1, got {max_channels!r}")
        self.batch_size, self.max_channels, self.progress = batch_size, max_channels, progress

    def with_method(self, method: str | CamMethod) -> Explainer:
        """A new explainer sharing this one's split graphs, with another method (no re-tracing)."""
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other._lock = threading.Lock()
        other._splits = dict(self._splits)
        other.method = get_method(method)
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

    def _split_for_mode(self) -> SplitModel:
        assert self._model is not None
        mode = self._model.training
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
                (K classes per image, one backbone forward and one batched backward).
            topk: instead of ``targets``, explain each image's ``topk`` highest-scoring
                classes (``targets`` becomes ``(N, topk)``, best first).
            aug_smooth: average the maps of 6 augmented copies (horizontal flip x intensity
                0.9/1.0/1.1, as pytorch-grad-cam), each mapped back; targets are fixed from the
                original images, logits are the original's. Costs 6 calls.
            eigen_smooth: replace the channel sum by the first principal component of the
                per-channel contributions (see :mod:`explainer.smoothing`); no effect on
                eigencam/eigengradcam, which are principal components already.

        Returns:
            An :class:`Explanation`; maps keep a K axis only for ``(N, K)`` targets.
        """
        logits, target_idx, keep_k, raw, cams = self._maps(x, targets, topk, eigen_smooth)
        if aug_smooth:
            raws, all_cams = [raw], [cams]
            for flip, factor in AUGMENTATIONS:
                augmented = x * factor
                _, _, _, r, c = self._maps(augmented.flip(-1) if flip else augmented, target_idx, None, eigen_smooth)
                raws.append(r.flip(-1) if flip else r)
                all_cams.append(c.flip(-1) if flip else c)
            raw, cams = torch.stack(raws).mean(0), torch.stack(all_cams).mean(0)
        if not keep_k:
            raw, cams, target_idx = raw[:, 0], cams[:, 0], target_idx[:, 0]
        return Explanation(logits, target_idx, raw.detach(), cams.detach(), self.method.name, self.layer)

    explain = __call__

    def _maps(self, x: Tensor, targets: Targets, topk: int | None,
              eigen: bool = False) -> tuple[Tensor, Tensor, bool, Tensor, Tensor]:
        """``(logits, targets (N, K), K given?, raw (N, K, h, w), cams (N, K, H, W))`` for one batch."""
        check_grad_mode()
        backbone, head = self._parts()
        device, dtype = model_device_dtype(head) if isinstance(head, nn.Module) else (None, None)
        if device is None and isinstance(backbone, nn.Module):
            device, dtype = model_device_dtype(backbone)
        check_input(x, device, dtype, self._in_channels)

        activations, skips = self._run_backbone(backbone, x)
        needs_grad = self.method.needs_gradient
        leaf = activations.detach().requires_grad_(needs_grad)
        with torch.set_grad_enabled(needs_grad):
            # clone: the head may modify its input in place (DenseNet's ReLU(inplace=True)).
            logits = head(leaf.clone(), *skips)
        _check_logits(logits, x.shape[0])
        if topk is not None:
            if targets is not None:
                raise TargetError("give either targets or topk, not both")
            if not 1 <= int(topk) <= logits.shape[1]:
                raise TargetError(f"topk must be in [1, {logits.shape[1]}] (the number of classes), got {topk}")
            targets = logits.detach().topk(int(topk), dim=1).indices
        target_idx, keep_k = resolve_targets(targets, logits)

        weights = None
        if self.method.perturbation is not None:
            weights = self.method.perturbation(activations, target_idx, self._probe(backbone, head, skips, x))
            grads = activations.new_empty(0)
        elif needs_grad:
            with torch.enable_grad():  # the caller may be under no_grad
                grads = target_gradients(logits, leaf, target_idx)
        else:
            grads = activations.new_empty(0)
        parts = contributions(self.method, activations, grads, weights) if eigen else None
        if parts is not None:
            raw = eigen_smooth(parts)
        elif weights is not None:
            raw = weighted_sum(weights, activations)
        else:
            raw = self.method.compute(activations, grads)
        raw = raw.expand(-1, target_idx.shape[1], -1, -1) if raw.shape[1] != target_idx.shape[1] else raw
        if not bool(torch.isfinite(raw).all()):
            raise NonFiniteError(
                f"{self.method.name} produced NaN/inf values at {self.layer!r} (the activations or gradients "
                "overflowed); check the model's weights and dtype"
            )
        cams = upsample_maps(normalize_maps(raw), x.shape[-2], x.shape[-1])
        return logits.detach(), target_idx, keep_k, raw.detach(), cams.detach()

    def _probe(self, backbone: Backbone, head: Head, skips: tuple, x: Tensor) -> Probe:
        def model(images: Tensor) -> Tensor:
            out = backbone(images)
            a, *extra = (out,) if isinstance(out, Tensor) else tuple(out)
            return head(a, *extra)

        def head_on_copy(a: Tensor, *extra: Tensor) -> Tensor:
            return head(a.clone(), *extra)  # the head may modify its input in place

        return Probe(head_on_copy, skips, model, x, self.batch_size, self.max_channels, self.progress)

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
        if not isinstance(activations, Tensor) or activations.ndim != 4:
            shape = tuple(activations.shape) if isinstance(activations, Tensor) else type(activations).__name__
            raise LayerShapeError(
                f"layer {self.layer!r} outputs {shape}, not a spatial (N, C, h, w) map; pick a convolutional "
                "layer (token layers of vision transformers need the reshape option, not supported yet)"
            )
        if activations.shape[-2] * activations.shape[-1] == 1:
            raise LayerShapeError(
                f"layer {self.layer!r} outputs {tuple(activations.shape)}: a 1x1 map has no spatial "
                "extent to explain; pick an earlier layer (or a larger input)"
            )
        return activations, tuple(skips)

    def __repr__(self) -> str:
        return f"Explainer(layer={self.layer!r}, method={self.method.name!r})"


def _check_logits(logits: object, n: int) -> None:
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != n:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ModelOutputError(
            f"the model returned {shape}; the explainer needs logits of shape (N={n}, num_classes)"
        )
    if not bool(torch.isfinite(logits).all()):
        raise NonFiniteError("the model produced NaN or inf logits for this input")
