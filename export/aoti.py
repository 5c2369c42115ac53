"""AOTInductor export: the explanation compiled ahead of time into a ``.pt2`` package for C++ and Python.

The package holds the same forward-only graph the ONNX export builds (:func:`export.onnx_graph.build_onnx_module`:
the head's gradient traced with ``make_fx``, or the analytic one of pool + linear heads), put through
``torch.export`` with a dynamic batch and compiled by ``torch._inductor.aoti_compile_and_package``.
It loads with plain ``torch._inductor.aoti_load_package(path)`` (deploycam not needed:
``logits, cam = runner(images, target)``), through :func:`export.load`, and from C++ with
``torch::inductor::AOTIModelPackageLoader`` (``examples/cpp/aoti_main.cpp``). Unlike the TorchScript
graph it needs no grad mode: the gradient is already part of the compiled code.

Compiling takes about a minute on 2 CPU cores (C++ compile of the generated kernels); the package runs
on the device the example was on (CPU, or CUDA with a CUDA example) and on machines with the
compiling CPU's instruction set (the package records it as ``AOTI_CPU_ISA``).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from dataclasses import replace

import torch
from torch import Tensor
from torch.export import Dim

from explainer.core import Explainer
from explainer.errors import ExportError
from explainer.tracing_lock import tracing
from export.onnx_graph import build_onnx_module
from export.parts import GraphInfo, check_destination

#: the metadata key inside the package (``runner.get_metadata()["deploycam"]``, a GraphInfo as JSON)
METADATA_KEY = "deploycam"
SUFFIX = ".pt2"


def to_aoti(explainer: Explainer, path: str | os.PathLike, example_input: Tensor, part: str = "full",
            dynamic_batch: bool = True) -> GraphInfo:
    """Compile the explanation into an AOTInductor package at ``path`` (``*.pt2``).

    Args:
        explainer: an eval-mode :class:`~explainer.Explainer` with a gradient or activation method.
        path: the package file; it must end in ``.pt2`` and its folder must exist.
        example_input: images ``(N, 3, H, W)`` as the model takes them (``(N, H, W, C)`` for NHWC ONNX
            models); the package's spatial size is ``H x W``, its device the example's.
        part: ``"full"`` (images -> logits, cam ``(N, H, W)``) or ``"head"`` (activations -> logits,
            cam ``(N, h, w)``).
        dynamic_batch: keep the batch symbolic (any N >= 1); otherwise fixed to the example's.

    The package's inputs are ``(input, target)``, ``target`` ``(N,)`` int64 (negative: argmax), its
    outputs ``(logits (N, K), cam)``. Returns the :class:`GraphInfo` stored in the package.
    """
    if not os.fspath(path).endswith(SUFFIX):
        raise ExportError(f"an AOTInductor package must end in {SUFFIX} (aoti_load_package requires it); got {path}")
    check_destination(path)
    with tracing():
        module, args, info = build_onnx_module(explainer, example_input, part, dynamic_batch)
        batch = Dim("batch", min=1)
        dynamic = ({0: batch}, {0: batch}) if dynamic_batch else None
        try:
            program = torch.export.export(module, args, dynamic_shapes=dynamic, strict=False)
        except Exception as exc:  # noqa: BLE001 - torch.export raises many error types
            raise ExportError(f"torch.export failed for {info.method!r} at {info.layer!r}: {type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
    info = replace(info, format="aoti")
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*CUDA.*")
            torch._inductor.aoti_compile_and_package(
                program, package_path=os.fspath(path),
                inductor_configs={"aot_inductor.metadata": {METADATA_KEY: info.to_json()}})
    except Exception as exc:  # noqa: BLE001 - compiler errors carry the C++ compiler's output
        raise ExportError(f"AOTInductor could not compile the explanation: {type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0][:500] if str(exc).strip() else ''}") from exc
    return info
