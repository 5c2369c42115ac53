"""``deploycam layers``, ``deploycam models`` and ``deploycam methods``: what can be explained, where, and how."""

from __future__ import annotations

import argparse

from deploycam.cli.args import add_model_args, add_onnx_args, check_onnx_file, check_positive


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("layers", help="list a model's layers with output shapes, to pick --layer")
    add_model_args(p, with_method=False)
    p.add_argument("--size", type=int, default=224, help="probe input size (default 224)")
    p.add_argument("--nodes", action="store_true", help="list every traced node (function calls too), not only modules")
    p.add_argument("--all", action="store_true", help="also list layers without a spatial (N, C, h, w) output")
    add_onnx_args(p, preprocessing=False)
    p.set_defaults(run=run_layers)
    m = sub.add_parser("models", help="list the model names --model accepts")
    m.set_defaults(run=run_models)
    methods = sub.add_parser("methods", help="list the CAM methods --method accepts")
    methods.set_defaults(run=run_methods)


def run_layers(args: argparse.Namespace) -> int:
    check_positive("--size", args.size)
    check_onnx_file(args)
    if args.onnx:
        return _onnx_layers(args.onnx)
    from deploycam.cli.common import model_from_args
    from explainer.layers import list_layers

    loaded = model_from_args(args, quiet=True)
    rows = list_layers(loaded.model, (1, 3, args.size, args.size), nodes=args.nodes)
    shown = [r for r in rows if args.all or r.is_spatial]
    width = max((len(r.name) for r in shown), default=10)
    print(f"{'layer':<{width}}  {'type':<24} output shape (input {args.size}x{args.size})")
    for r in shown:
        note = "" if r.calls == 1 else f"  (called {r.calls}x: target one call by --nodes name)"
        shape = "x".join(map(str, r.shape)) if r.shape else "-"
        mark = "  <- default" if r.name == loaded.layer else ""
        print(f"{r.name:<{width}}  {r.kind:<24} {shape}{note}{mark}")
    return 0


def _onnx_layers(path: str) -> int:
    """The 4-D tensors of an ONNX graph (name, shape as the file states it, node), the default marked."""
    from explainer.onnx_import import default_tensor, normalise, read_model, spatial_tensors

    model = normalise(read_model(path))
    tensors = spatial_tensors(model)
    default = default_tensor(model, tensors).name if tensors else None
    width = max((len(t.name) for t in tensors), default=10)
    print(f"{'tensor':<{width}}  {'shape':<22} node")
    for t in tensors:
        dims = "x".join("N" if i == 0 else (str(d) if isinstance(d, int) else "?") for i, d in enumerate(t.shape))
        layout = " NHWC" if t.layout == "nhwc" else ""
        mark = "  <- default" if t.name == default else ""
        print(f"{t.name:<{width}}  {dims + layout:<22} {t.op_type} {t.node}{mark}")
    if not tensors:
        print(f"{path} has no 4-D tensor with a spatial map to explain")
        return 1
    return 0


def run_models(args: argparse.Namespace) -> int:
    from explainer.models import available_models, detector_names

    for name in available_models():
        print(name + ("  (ImageNet weights bundled)" if name == "efficientnet-lite0" else ""))
    for name in detector_names():
        print(f"{name}  (detector: explain draws per-box maps)")
    return 0


def run_methods(args: argparse.Namespace) -> int:
    from explainer.methods import METHODS

    width = max(len(name) for name in METHODS)
    for name, method in METHODS.items():
        print(f"{name:<{width}}  {method.summary}")
    return 0
