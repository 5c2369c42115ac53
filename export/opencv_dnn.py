"""Which OpenCV DNN engine runs deploycam's ONNX graphs, found by feature rather than by version number.

OpenCV's DNN module has changed its engine API twice in the versions pip serves:

==========  ================================================  ===========================================
OpenCV      engine constants in ``cv2.dnn``                     what deploycam uses
==========  ================================================  ===========================================
4.x         none (one engine: the classic one)                  nothing: the classic engine loads none of
                                                                these graphs (ScatterElements, Einsum...)
5.0         ``ENGINE_CLASSIC``, ``ENGINE_NEW``, ``ENGINE_AUTO``  ``ENGINE_NEW``
5.1         ``ENGINE_OPENCV`` (the new engine, classic gone),   ``ENGINE_OPENCV``
            ``ENGINE_ORT``, ``ENGINE_AUTO``
==========  ================================================  ===========================================

:func:`new_engine` returns the constant to pass to ``cv2.dnn.readNetFromONNX``; an OpenCV that
has neither the 5.0 nor the 5.1 form raises :class:`~explainer.errors.ExportError` naming the
version found and the versions supported. ``ENGINE_AUTO`` is never used: on 5.0 it falls back to
the classic engine silently, and ``ENGINE_ORT`` would be ONNX Runtime again, not OpenCV.
"""

from __future__ import annotations

from types import ModuleType

from explainer.errors import ExportError

#: the OpenCV releases whose DNN engine deploycam is tested with (pyproject's ``opencv`` extra)
SUPPORTED = "OpenCV 5.0 and 5.1 (pip install 'opencv-python-headless>=5.0,<5.2', the 'opencv' extra)"


def new_engine(cv2: ModuleType | None = None) -> int:
    """The ``engine`` argument of ``cv2.dnn.readNetFromONNX`` that selects OpenCV's graph engine
    (the 5.x "new" engine), for the OpenCV module ``cv2`` (default: the installed one)."""
    if cv2 is None:
        try:
            import cv2
        except ImportError as exc:
            raise ExportError(f"runtime='opencv' needs OpenCV's DNN module; supported: {SUPPORTED}") from exc
    version = getattr(cv2, "__version__", "unknown")
    dnn = getattr(cv2, "dnn", None)
    if dnn is None or not hasattr(dnn, "readNetFromONNX"):
        raise ExportError(f"this OpenCV ({version}) has no DNN module (cv2.dnn.readNetFromONNX); "
                          f"supported: {SUPPORTED}")
    if hasattr(dnn, "ENGINE_NEW"):  # 5.0: classic and new side by side
        return int(dnn.ENGINE_NEW)
    if hasattr(dnn, "ENGINE_OPENCV") and not hasattr(dnn, "ENGINE_CLASSIC"):  # 5.1: the new engine is OpenCV's only one
        return int(dnn.ENGINE_OPENCV)
    if not any(name.startswith("ENGINE_") for name in dir(dnn)):
        raise ExportError(f"this OpenCV ({version}) has only the classic DNN engine, which loads none of deploycam's "
                          f"graphs; supported: {SUPPORTED}")
    engines = ", ".join(sorted(name for name in dir(dnn) if name.startswith("ENGINE_")))
    raise ExportError(f"this OpenCV ({version}) offers DNN engines deploycam does not know ({engines}); "
                      f"supported: {SUPPORTED}")


def read_onnx(path: str, cv2: ModuleType | None = None):
    """``cv2.dnn.readNetFromONNX(path)`` on the graph engine (:func:`new_engine`); a ``cv2.dnn.Net``."""
    if cv2 is None:
        import cv2 as installed

        cv2 = installed
    return cv2.dnn.readNetFromONNX(path, new_engine(cv2))
