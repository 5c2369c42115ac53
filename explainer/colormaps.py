"""OpenCV's colour maps by name (no torch import: the CLI lists them in its help)."""

from __future__ import annotations

import cv2

from explainer.errors import InputError

#: Names accepted by ``colormap`` (OpenCV's ``cv2.COLORMAP_*``, lower case).
COLORMAPS: dict[str, int] = {
    name[len("COLORMAP_"):].lower(): getattr(cv2, name) for name in dir(cv2) if name.startswith("COLORMAP_")
}


def colormap_id(colormap: str | int) -> int:
    """OpenCV's id for a colour map name (``"jet"``, ``"COLORMAP_TURBO"``) or id; InputError for unknown names."""
    if isinstance(colormap, int):
        return colormap
    key = colormap.lower().removeprefix("colormap_")
    if key not in COLORMAPS:
        raise InputError(f"unknown colormap {colormap!r}; OpenCV has: {', '.join(sorted(COLORMAPS))}")
    return COLORMAPS[key]
