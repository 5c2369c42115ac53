"""What a path given to :func:`export.load` must be: an existing file with an exported graph's suffix.

Checked before any engine opens it, so a missing path, a folder or a picture gets a sentence that
names the problem and what is accepted, not an engine's parse error.
"""

from __future__ import annotations

import glob
import os

from explainer.errors import ExportError, GraphFileNotFoundError

#: suffix -> what opens it
GRAPH_SUFFIXES = {".onnx": "ONNX Runtime, OpenVINO or OpenCV DNN", ".pt": "TorchScript", ".ts": "TorchScript",
                  ".pth": "TorchScript", ".pt2": "AOTInductor"}
ACCEPTED = ", ".join(f"{suffix} ({what})" for suffix, what in GRAPH_SUFFIXES.items())


def check_graph_path(path: str, suffixes: tuple[str, ...] = tuple(GRAPH_SUFFIXES)) -> str:
    """``path`` if it is a file whose suffix is one of ``suffixes`` (case-insensitive), its suffix lowered;
    else :class:`GraphFileNotFoundError` (nothing there) or :class:`ExportError` (a folder, another suffix)."""
    accepted = ", ".join(f"{s} ({GRAPH_SUFFIXES[s]})" for s in suffixes)
    if os.path.isdir(path):
        inside = sorted(os.path.basename(p) for s in suffixes for p in glob.glob(os.path.join(glob.escape(path), "*" + s)))
        hint = f"; it holds {', '.join(inside[:5])}{' ...' if len(inside) > 5 else ''}" if inside else ""
        raise ExportError(f"{path} is a folder; give one exported graph file: {accepted}{hint}")
    if not os.path.exists(path):
        raise GraphFileNotFoundError(f"no exported graph at {path} (no such file)")
    if not os.path.isfile(path):
        raise ExportError(f"{path} is not a regular file; give one exported graph file: {accepted}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in suffixes:
        raise ExportError(f"{path} has the suffix {suffix or '(none)'!r}, not an exported graph's; accepted: {accepted}"
                          " (rename the file if it is one)")
    return suffix
