"""The CAM methods, one module each, registered by name in :data:`METHODS`."""

from __future__ import annotations

from types import MappingProxyType

from explainer.errors import MethodError, close_matches
from explainer.methods import (
    ablationcam,
    cam,
    eigencam,
    eigengradcam,
    gradcam,
    gradcam_elementwise,
    gradcam_plus_plus,
    hirescam,
    layercam,
    scorecam,
    xgradcam,
)
from explainer.methods.base import CamFunction, CamMethod, Probe

_ALL = (gradcam, gradcam_plus_plus, xgradcam, hirescam, gradcam_elementwise, layercam, eigencam, eigengradcam, cam,
        ablationcam, scorecam)

#: Every method by name (read-only).
METHODS: MappingProxyType[str, CamMethod] = MappingProxyType({m.METHOD.name: m.METHOD for m in _ALL})


def get_method(name: str | CamMethod) -> CamMethod:
    """The registered method called ``name`` (a :class:`CamMethod` passes through).

    Raises :class:`MethodError` listing the known names.
    """
    if isinstance(name, CamMethod):
        return name
    key = str(name).lower().replace("_", "-")
    aliases = {"gradcampp": "gradcam++", "gradcam-plus-plus": "gradcam++", "gradcamelementwise": "gradcam-elementwise"}
    key = aliases.get(key, key)
    if key not in METHODS:
        near = close_matches(key, METHODS)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise MethodError(f"unknown method {name!r}{hint}; known methods: {', '.join(METHODS)}")
    return METHODS[key]


__all__ = ["METHODS", "CamMethod", "CamFunction", "Probe", "get_method"]
