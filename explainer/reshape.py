"""Turn a target layer's output into the ``(N, C, h, w)`` map the CAM methods read.

Convolutional layers need nothing. Vision transformers do:

* ViT / DeiT token layers output ``(N, T, C)``: T = (prefix tokens: class, distillation,
  registers) + h * w patch tokens. :class:`TokenGrid` drops the prefix tokens and lays the
  rest out as an ``h x w`` grid (given, or inferred from T and the input's aspect ratio).
* Swin (torchvision ``swin_t`` / ``swin_s`` / ``swin_b``) stages output channels-last
  ``(N, h, w, C)``: :class:`ChannelsLast` permutes them.

The same rearrangement is applied to the activations and to their gradients (it is
linear), as pytorch-grad-cam's ``reshape_transform``. For ViT, pick a layer whose patch tokens
still feed the class token through attention -- the last block's first LayerNorm
(torchvision: ``encoder.layers.encoder_layer_11.ln_1``) -- since after the last block only
the class token reaches the classifier and the patch tokens' gradients are zero.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

from torch import Tensor

from explainer.errors import LayerShapeError

#: A rearrangement ``(activations, (H, W) of the input) -> (N, C, h, w)``.
Reshape = Callable[[Tensor, tuple[int, int]], Tensor]

MAX_PREFIX_TOKENS = 8


class TokenGrid:
    """``(N, T, C)`` tokens -> ``(N, C, h, w)``, dropping ``prefix_tokens`` leading tokens.

    Args:
        grid: ``(h, w)`` of the patch grid; None infers it: the smallest number of prefix
            tokens (0 to 8, or ``prefix_tokens`` when given) leaving ``h * w`` tokens with
            ``h / w`` equal to the input's aspect ratio.
        prefix_tokens: leading non-patch tokens (1 for ViT's class token, 2 for DeiT-distilled);
            None infers it from ``grid`` or as above.
    """

    def __init__(self, grid: tuple[int, int] | None = None, prefix_tokens: int | None = None) -> None:
        if grid is not None and (len(grid) != 2 or any(int(g) < 1 for g in grid)):
            raise LayerShapeError(f"grid must be (h, w) with h, w >= 1, got {grid!r}")
        if prefix_tokens is not None and prefix_tokens < 0:
            raise LayerShapeError(f"prefix_tokens must be >= 0, got {prefix_tokens}")
        self.grid = None if grid is None else (int(grid[0]), int(grid[1]))
        self.prefix_tokens = prefix_tokens

    def layout(self, tokens: int, image_hw: tuple[int, int]) -> tuple[int, int, int]:
        """``(prefix, h, w)`` for ``tokens`` tokens and an input of ``image_hw``; raises LayerShapeError."""
        if self.grid is not None:
            h, w = self.grid
            prefix = tokens - h * w
            if prefix < 0 or (self.prefix_tokens is not None and prefix != self.prefix_tokens):
                wanted = h * w + (self.prefix_tokens or 0)
                raise LayerShapeError(
                    f"the layer outputs {tokens} tokens, which do not fit grid {h}x{w}"
                    f"{f' + {self.prefix_tokens} prefix tokens' if self.prefix_tokens else ''} ({wanted} tokens)"
                    f"{_suggestion(tokens, image_hw)}"
                )
            return prefix, h, w
        candidates = [self.prefix_tokens] if self.prefix_tokens is not None else range(MAX_PREFIX_TOKENS + 1)
        found = _infer_layout(tokens, image_hw, candidates)
        if found is not None:
            return found
        raise LayerShapeError(
            f"the layer outputs {tokens} tokens, which fit no h x w grid with the input's aspect ratio "
            f"{image_hw[0]}:{image_hw[1]} after "
            f"{self.prefix_tokens if self.prefix_tokens is not None else f'0 to {MAX_PREFIX_TOKENS}'} prefix tokens; "
            "pass reshape=TokenGrid(grid=(h, w), prefix_tokens=p)"
        )

    def __call__(self, activations: Tensor, image_hw: tuple[int, int]) -> Tensor:
        if activations.ndim != 3:
            raise LayerShapeError(f"TokenGrid needs token activations (N, tokens, C), got {tuple(activations.shape)}")
        prefix, h, w = self.layout(activations.shape[1], image_hw)
        return activations[:, prefix:].transpose(1, 2).reshape(activations.shape[0], activations.shape[2], h, w)

    def __repr__(self) -> str:
        return f"TokenGrid(grid={self.grid}, prefix_tokens={self.prefix_tokens})"


def fits_aspect(grid_hw: tuple[int, int], image_hw: tuple[int, int], tolerance: float = 0.25) -> bool:
    """True when a ``(h, w)`` feature grid has about the input's aspect ratio (within 25%: strided
    convolutions round sizes), as a spatial map of the image does."""
    (h, w), (height, width) = grid_hw, image_hw
    if min(h, w, height, width) < 1:
        return False
    return abs(math.log((h / w) / (height / width))) <= math.log(1 + tolerance)


def _grid_for(patches: int, image_hw: tuple[int, int]) -> tuple[int, int] | None:
    """``(h, w)`` with ``h * w == patches`` and ``h / w == H / W``, or None."""
    if patches < 1:
        return None
    height, width = image_hw
    for h in range(1, patches + 1):
        if patches % h == 0 and h * width == (patches // h) * height:
            return h, patches // h
    return None


def _infer_layout(tokens: int, image_hw: tuple[int, int], prefixes) -> tuple[int, int, int] | None:
    """The first ``(prefix, h, w)`` over ``prefixes`` whose patch grid fits the input's aspect ratio, or None."""
    for prefix in prefixes:
        found = _grid_for(tokens - prefix, image_hw)
        if found is not None:
            return prefix, *found
    return None


def _suggestion(tokens: int, image_hw: tuple[int, int]) -> str:
    found = _infer_layout(tokens, image_hw, range(MAX_PREFIX_TOKENS + 1))
    if found is None:
        return ""
    prefix, h, w = found
    return f"; expected grid for this input: {h}x{w} with {prefix} prefix token(s)"


class ChannelsLast:
    """``(N, h, w, C)`` -> ``(N, C, h, w)`` (Swin's stage outputs)."""

    def __call__(self, activations: Tensor, image_hw: tuple[int, int]) -> Tensor:
        if activations.ndim != 4:
            raise LayerShapeError(f"ChannelsLast needs (N, h, w, C) activations, got {tuple(activations.shape)}")
        _, a, b, c = activations.shape
        if not fits_aspect((a, b), image_hw) and fits_aspect((b, c), image_hw):
            raise LayerShapeError(
                f"reshape='channels_last' expects (N, h, w, C) activations, but {tuple(activations.shape)} looks "
                f"like (N, C={a}, h={b}, w={c}) for an input of {image_hw[0]}x{image_hw[1]}: this layer is already "
                "channels-first, so drop reshape="
            )
        return activations.permute(0, 3, 1, 2)

    def __repr__(self) -> str:
        return "ChannelsLast()"


class _Function:
    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        self.fn = fn

    def __call__(self, activations: Tensor, image_hw: tuple[int, int]) -> Tensor:
        return self.fn(activations)


NAMED = {"tokens": TokenGrid, "vit": TokenGrid, "channels_last": ChannelsLast, "swin": ChannelsLast}


def as_reshape(spec: str | Callable | None) -> Reshape | None:
    """``None``; ``"tokens"``/``"vit"`` (:class:`TokenGrid` inferred); ``"channels_last"``/``"swin"``;
    a :class:`TokenGrid`/:class:`ChannelsLast`; or a linear per-image function ``(N, ...) -> (N, C, h, w)``."""
    if spec is None or isinstance(spec, (TokenGrid, ChannelsLast)):
        return spec
    if isinstance(spec, str):
        if spec.lower() not in NAMED:
            raise LayerShapeError(f"unknown reshape {spec!r}; use one of {', '.join(NAMED)}, a TokenGrid(...) "
                                  "or a function (N, ...) -> (N, C, h, w)")
        return NAMED[spec.lower()]()
    if callable(spec):
        return _Function(spec)
    raise LayerShapeError(f"reshape must be None, a name ({', '.join(NAMED)}) or a callable, got {spec!r}")


def as_grid(layer_out: Tensor, reshape: Reshape | None, image_hw: tuple[int, int], layer: str) -> Tensor:
    """The layer's output as ``(N, C, h, w)`` (through ``reshape``), with clear errors.

    :class:`LayerShapeError` for a non-spatial output (pointing to ``reshape=`` for token layers)
    and for a 1x1 map; a warning when a channels-first-looking map is probably channels-last.
    """
    n = layer_out.shape[0]
    grid = layer_out if reshape is None else reshape(layer_out, image_hw)
    if not isinstance(grid, Tensor) or grid.ndim != 4 or grid.shape[0] != n:
        shape = tuple(grid.shape) if isinstance(grid, Tensor) else type(grid).__name__
        raise LayerShapeError(
            f"layer {layer!r} outputs {shape}, not a spatial (N, C, h, w) map; pick a convolutional "
            "layer, or pass reshape= for token layers of vision transformers ('tokens' for (N, tokens, C), "
            "'channels_last' for Swin's (N, h, w, C))"
            if reshape is None else
            f"reshape turned layer {layer!r}'s output {tuple(layer_out.shape)} into {shape}, not (N={n}, C, h, w)"
        )
    if grid.shape[-2] * grid.shape[-1] == 1:
        raise LayerShapeError(
            f"layer {layer!r} outputs {tuple(grid.shape)}: a 1x1 map has no spatial "
            "extent to explain; pick an earlier layer (or a larger input)"
        )
    if reshape is None and grid.shape[1] == grid.shape[2] and grid.shape[3] > 4 * grid.shape[1]:
        warnings.warn(
            f"layer {layer!r} outputs {tuple(grid.shape)}, which looks channels-last (N, h, w, C) "
            "(Swin); if so pass reshape='channels_last'", stacklevel=6,
        )
    return grid


def as_grid_batched(gradients: Tensor, reshape: Reshape | None, image_hw: tuple[int, int]) -> Tensor:
    """Gradients ``(N, K, *layer output shape)`` -> ``(N, K, C, h, w)``, as :func:`as_grid` lays out the layer."""
    if reshape is None:
        return gradients
    n, k = gradients.shape[:2]
    grid = reshape(gradients.flatten(0, 1), image_hw)
    return grid.reshape(n, k, *grid.shape[1:])
