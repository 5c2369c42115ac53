"""What produced a dataset run's rows, so that ``resume`` never mixes two runs in one output folder.

Each Parquet part carries the run's identity in its schema metadata (key ``deploycam.run``, JSON):
the method, the layer, a fingerprint of the model's weights (or of the exported graph's file), the
targets (``targets`` / ``topk``), the input size and normalisation, and the metric columns. A run
resumed into a folder whose parts say otherwise is refused with the differences named, instead of
adding rows of another model or method under the same ``path`` keys.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from explainer.errors import InputError

METADATA_KEY = b"deploycam.run"


def weights_fingerprint(modules: list[Any]) -> str:
    """A SHA-1 (16 hex digits) of the parameters' and buffers' names, shapes and bytes of the ``nn.Module`` s
    among ``modules`` ("" when none is a module)."""
    digest = hashlib.sha1()
    found = False
    seen: set[int] = set()
    for module in modules:
        if not isinstance(module, nn.Module) or id(module) in seen:
            continue
        found = True
        seen.add(id(module))
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            data = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{name}{tuple(tensor.shape)}{data.dtype}".encode())
            digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()[:16] if found else ""


def file_fingerprint(path: str) -> str:
    """A SHA-1 (16 hex digits) of a file's bytes."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def explainer_identity(explainer: Any) -> dict[str, str]:
    """``{"method", "layer", "model"}`` of an eager explainer (multi-layer too) or an exported graph's runtime
    (``model``: the weights' or the file's fingerprint); ``{}`` for any other callable (a wrapper of the
    caller's own: nothing to compare)."""
    info = getattr(explainer, "info", None)
    if info is not None and hasattr(explainer, "path"):  # an exported graph's runtime
        return {"method": info.method, "layer": info.layer, "model": "file:" + file_fingerprint(explainer.path)}
    if info is not None:
        return {"method": info.method, "layer": info.layer, "model": getattr(explainer, "backend", "")}
    if not hasattr(explainer, "method") or not hasattr(explainer, "layer"):
        return {}
    layers = getattr(explainer, "layer_explainers", [explainer])  # a multi-layer explainer: one split per layer
    modules: list[Any] = []
    for e in layers:
        model = getattr(e, "_model", None)
        modules += [model] if model is not None else [getattr(e, "_backbone", None), getattr(e, "_head", None)]
    modules = [m for m in modules if isinstance(m, nn.Module)]
    model_id = f"{type(modules[0]).__name__}:{weights_fingerprint(modules)}" if modules else type(explainer).__name__
    method = getattr(explainer, "method", None)
    return {"method": str(getattr(method, "name", method)), "layer": str(getattr(explainer, "layer", "")),
            "model": model_id}


def run_identity(explainer: Any, *, targets: int | None, topk: int | None, preprocess: Any,
                 metrics: tuple[str, ...]) -> dict[str, Any]:
    """The identity written into every part (see the module docstring)."""
    return explainer_identity(explainer) | {
        "targets": targets, "topk": topk, "metrics": list(metrics),
        "input": {"size": preprocess.crop_size, "resize": preprocess.resize, "mean": list(preprocess.mean),
                  "std": list(preprocess.std), "scale": preprocess.scale, "bgr": preprocess.bgr,
                  "resize_size": preprocess.resize_size},
    }


def encode(identity: Mapping[str, Any]) -> dict[bytes, bytes]:
    """The schema metadata entry for ``identity``."""
    return {METADATA_KEY: json.dumps(identity, sort_keys=True).encode()}


def decode(metadata: Mapping[bytes, bytes] | None) -> dict[str, Any] | None:
    """The identity stored in a part's schema metadata (None for parts written without one)."""
    raw = (metadata or {}).get(METADATA_KEY)
    return None if raw is None else json.loads(raw)


def check_same_run(folder: str, stored: Mapping[str, Any] | None, current: Mapping[str, Any]) -> None:
    """:class:`InputError` naming what differs when ``folder``'s parts (``stored``) came from another run."""
    if stored is None:
        return
    differences = [f"{key}: {stored[key]!r} there, {current[key]!r} now"  # keys both know (see explainer_identity)
                   for key in sorted(set(stored) & set(current)) if stored[key] != current[key]]
    if differences:
        raise InputError(f"{os.fspath(folder)} holds rows of another run ({'; '.join(differences)}); resuming would "
                         "mix the two runs' rows: give another output, or the same model, method, layer, targets "
                         "and input options as that run")
