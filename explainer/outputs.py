"""Pick the tensor to explain from a model output that is a dict, tuple or list.

torchvision's segmentation models return ``{"out": (N, classes, H, W)}`` (plus ``"aux"`` when
built with an auxiliary head); detection-style or multi-task models return tuples. The
explainer's ``output_key`` names the entry: a dict key, a sequence index, or a callable
``output -> Tensor``. Without one, an output with a single tensor entry is unwrapped and
anything ambiguous is an error that lists the entries.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from torch import Tensor

from explainer.errors import ModelOutputError

#: What ``output_key`` may be: None (a tensor, or the only entry), a dict key, an index, or a selector.
OutputKey = None | str | int | Callable[[object], Tensor]


def _describe(output: object) -> str:
    if isinstance(output, Tensor):
        return f"a tensor {tuple(output.shape)}"
    if isinstance(output, Mapping):
        entries = ", ".join(f"{k!r}: {_describe(v)}" for k, v in output.items())
        return f"a dict {{{entries}}}"
    if isinstance(output, Sequence) and not isinstance(output, str):
        return f"a {type(output).__name__} of {len(output)} ({', '.join(_describe(v) for v in output)})"
    return type(output).__name__


def select_output(output: object, key: OutputKey = None) -> Tensor:
    """The tensor of ``output`` that ``key`` names (see the module doc).

    Raises :class:`ModelOutputError` naming the output's entries when the key does not fit.
    """
    if callable(key):
        chosen = key(output)
        if not isinstance(chosen, Tensor):
            raise ModelOutputError(f"output_key selector returned {type(chosen).__name__}, not a tensor")
        return chosen
    if key is None:
        if isinstance(output, Tensor):
            return output
        entries = list(output.values()) if isinstance(output, Mapping) else \
            list(output) if isinstance(output, (tuple, list)) else []
        tensors = [e for e in entries if isinstance(e, Tensor)]
        if len(entries) == 1 and len(tensors) == 1:
            return tensors[0]
        hint = "a dict key" if isinstance(output, Mapping) else "an index"
        raise ModelOutputError(
            f"the model returned {_describe(output)}; pass output_key= ({hint}, or a callable) to say "
            "which entry to explain"
        )
    try:
        chosen = output[key]  # type: ignore[index]  # a Mapping or Sequence; anything else raises TypeError
    except (KeyError, IndexError, TypeError) as exc:
        raise ModelOutputError(f"output_key {key!r} does not fit the model output, which is {_describe(output)}") \
            from exc
    if not isinstance(chosen, Tensor):
        raise ModelOutputError(f"output_key {key!r} selects {_describe(chosen)}, not a tensor")
    return chosen
