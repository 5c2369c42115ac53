"""The CAM methods, one module each, found and registered by name in :data:`METHODS`.

Every module of this package that defines ``METHOD = CamMethod(...)`` is a method (see
:mod:`explainer.methods.base`); nothing else lists them. The selectors below are what the
exports, the CLI, the bench and the tests iterate over.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import MappingProxyType

from explainer.errors import MethodError, close_matches
from explainer.methods.base import CamFunction, CamMethod, Probe


def _discover() -> dict[str, CamMethod]:
    found: dict[str, CamMethod] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name == "base":
            continue
        method = getattr(importlib.import_module(f"{__name__}.{info.name}"), "METHOD", None)
        if isinstance(method, CamMethod):
            if method.name in found:
                raise MethodError(f"two modules register a method called {method.name!r}")
            found[method.name] = method
    return dict(sorted(found.items(), key=lambda item: (item[1].order, item[0])))


#: Every method by name (read-only).
METHODS: MappingProxyType[str, CamMethod] = MappingProxyType(_discover())
_ALIASES = {alias: m.name for m in METHODS.values() for alias in m.aliases}


def get_method(name: str | CamMethod) -> CamMethod:
    """The registered method called ``name`` or one of its aliases (a :class:`CamMethod` passes through).

    Case, ``_`` and ``-`` do not matter. Raises :class:`MethodError` with the closest names and the list.
    """
    if isinstance(name, CamMethod):
        return name
    key = str(name).lower().replace("_", "-")
    squeezed = key.replace("-", "")
    key = _ALIASES.get(key) or _ALIASES.get(squeezed) or (squeezed if squeezed in METHODS else key)
    if key not in METHODS:
        near = close_matches(key, list(METHODS) + list(_ALIASES))
        hint = f" (did you mean {', '.join(dict.fromkeys(_ALIASES.get(n, n) for n in near))}?)" if near else ""
        raise MethodError(f"unknown method {name!r}{hint}; known methods: {', '.join(METHODS)}")
    return METHODS[key]


def gradient_methods() -> tuple[str, ...]:
    """Methods that differentiate the target score and work on any head (not ``cam``)."""
    return tuple(n for n, m in METHODS.items() if m.needs_gradient and m.exportable and not m.requires_linear_head)


def exportable_methods(linear_head: bool = False) -> tuple[str, ...]:
    """Methods that are one graph (TorchScript and ONNX export them); ``cam`` only with ``linear_head``."""
    return tuple(n for n, m in METHODS.items() if m.exportable and (linear_head or not m.requires_linear_head))


def per_frame_methods() -> tuple[str, ...]:
    """Methods cheap enough for every frame on any head: exportable ones plus head-only perturbation."""
    return tuple(n for n, m in METHODS.items() if not m.reruns_model and not m.requires_linear_head)


def perturbation_methods() -> tuple[str, ...]:
    """Methods that re-score perturbed copies instead of using gradients."""
    return tuple(n for n, m in METHODS.items() if not m.exportable)


__all__ = ["METHODS", "CamMethod", "CamFunction", "Probe", "get_method", "gradient_methods", "exportable_methods",
           "per_frame_methods", "perturbation_methods"]
