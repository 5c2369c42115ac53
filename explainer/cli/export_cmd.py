"""``deploycam export``: write the explanation as an ONNX or TorchScript graph, and check it."""

from __future__ import annotations

import argparse
import os

import torch

from explainer.cli.common import add_model_args, model_from_args
from explainer.core import Explainer
from explainer.errors import DeployCamError, InputError
from explainer.postprocess import normalize_maps


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the explanation (gradient inside) to ONNX or TorchScript")
    add_model_args(p)
    p.add_argument("--format", choices=("onnx", "torchscript"), default=None,
                   help="graph format (default: from --out's suffix, .onnx or .pt)")
    p.add_argument("--part", choices=("full", "head"), default="full",
                   help="full: image -> logits, cam; head: layer activations -> logits, cam")
    p.add_argument("--out", required=True, help="output file (.onnx or .pt)")
    p.add_argument("--size", type=int, default=224, help="input image size the graph is made for (default 224)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch size (ONNX; default dynamic)")
    p.add_argument("--no-check", action="store_true", help="skip the comparison with eager PyTorch")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from export import load, to_onnx, to_torchscript

    fmt = args.format or ("onnx" if args.out.endswith(".onnx") else "torchscript" if args.out.endswith(
        (".pt", ".ts", ".pth")) else None)
    if fmt is None:
        raise InputError(f"cannot tell the format from {args.out!r}: pass --format onnx|torchscript")
    loaded = model_from_args(args)
    explainer = Explainer(loaded.model, args.layer or loaded.layer, args.method, reshape=args.reshape or loaded.reshape)
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(2, 3, args.size, args.size, generator=gen)
    parent = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(parent, exist_ok=True)
    if fmt == "onnx":
        info = to_onnx(explainer, args.out, example, part=args.part, opset=args.opset,
                       dynamic_batch=not args.static_batch)
    else:
        info = to_torchscript(explainer, args.out, example, part=args.part)
    size_mb = os.path.getsize(args.out) / 2**20
    print(f"wrote {args.out} ({fmt}, part={info.part}, {info.method} at {info.layer}, "
          f"input (N, {', '.join(map(str, info.input_shape))}), {size_mb:.1f} MB)")
    if args.no_check:
        return 0
    fresh = torch.randn(3, 3, args.size, args.size, generator=gen)
    eager = explainer(fresh)
    runtime = load(args.out)
    inputs = fresh if args.part == "full" else explainer.backbone(fresh)[0].detach()
    exported = runtime(inputs)
    reference = eager.cams if args.part == "full" else normalize_maps(eager.raw)
    diff = float((exported.cams - reference).abs().max())
    same = bool(torch.equal(exported.targets, eager.targets))
    print(f"check on a fresh batch of 3 ({runtime.backend}): max |cam - eager| = {diff:.2e}, "
          f"same predicted classes: {same}")
    if diff > 1e-4 or not same:
        raise DeployCamError("the exported graph does not match eager PyTorch (max diff > 1e-4)")
    return 0
