"""Exceptions raised by deploycam.

Every error a user can cause by passing bad input derives from
:class:`DeployCamError`, and most also from the built-in class a caller would
expect (``ValueError`` for bad values, ``RuntimeError`` for bad state), so both
``except DeployCamError`` and ``except ValueError`` work.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DeployCamError(Exception):
    """Base class of every error deploycam raises on purpose."""


class LayerNotFoundError(DeployCamError, ValueError):
    """The target layer name is neither a submodule nor a traced node of the model."""


class LayerShapeError(DeployCamError, ValueError):
    """The target layer does not output a spatial ``(N, C, h, w)`` map."""


class TraceError(DeployCamError, RuntimeError):
    """torch.fx could not trace the model, or the traced graph cannot be split."""


class InputError(DeployCamError, ValueError):
    """The input batch has the wrong rank, channels, dtype or device, is empty, or holds NaN/inf."""


class TargetError(DeployCamError, ValueError):
    """The target classes are out of range or do not match the batch."""


class MethodError(DeployCamError, ValueError):
    """Unknown CAM method, or a method that does not apply to this model's head."""


class GradModeError(DeployCamError, RuntimeError):
    """Gradients are impossible in the current mode (``torch.inference_mode``)."""


class NonFiniteError(DeployCamError, ValueError):
    """The model produced NaN or inf logits or maps."""


class ModelOutputError(DeployCamError, ValueError):
    """The model's output is not a ``(N, num_classes)`` logits tensor."""


class ModelLoadError(DeployCamError, ValueError):
    """Unknown model name, or a weights file that does not fit."""


class ExportError(DeployCamError, RuntimeError):
    """A method, model or layer that cannot be exported, or a file that is not an exported graph."""


def close_matches(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The candidates closest to ``name`` (difflib ratio, then shared prefix), best first."""
    pool = list(dict.fromkeys(candidates))
    found = difflib.get_close_matches(name, pool, n=n, cutoff=0.5)
    if len(found) < n:
        prefixed = [c for c in pool if c.startswith(name) or name.startswith(c)]
        found += [c for c in prefixed if c not in found][: n - len(found)]
    return found


class OnnxModelError(DeployCamError, ValueError):
    """An ONNX file that cannot be read, has no spatial tensor to explain, or does not convert to PyTorch."""


class GraphFileNotFoundError(ExportError, FileNotFoundError):
    """``export.load`` / ``export.load_detector`` was given a path where no file is (``except FileNotFoundError``
    works too)."""
