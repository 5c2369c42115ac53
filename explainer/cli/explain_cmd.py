"""``deploycam explain``: overlay PNGs and top classes for image files."""

from __future__ import annotations

import argparse
import os
import sys

from tqdm import tqdm

from explainer.cli.common import (
    add_model_args,
    add_picture_args,
    explain_batch,
    format_classes,
    iter_image_paths,
    model_from_args,
)
from explainer.core import Explainer
from explainer.errors import InputError
from explainer.imaging import Preprocess, load_image


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="explain image files or directories; writes overlay PNGs")
    p.add_argument("paths", nargs="+", metavar="IMAGE_OR_DIR", help="image files, or directories of images")
    add_model_args(p)
    target = p.add_mutually_exclusive_group()
    target.add_argument("--class", dest="classes", type=int, nargs="+", metavar="K",
                        help="explain these class indices (default: the top class)")
    target.add_argument("--topk", type=int, default=1, help="explain each image's top-k classes (default 1)")
    p.add_argument("--out", default="deploycam-out", help="directory for the PNGs (default ./deploycam-out)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--aug-smooth", action="store_true",
                   help="average over flips and intensity changes (6x the cost; eager only)")
    p.add_argument("--eigen-smooth", action="store_true",
                   help="first principal component of the channel contributions instead of their sum (eager only)")
    p.add_argument("--runtime", default=None, metavar="FILE",
                   help="explain with an exported graph (.onnx via ONNX Runtime, .pt via TorchScript; part full) "
                        "instead of eager PyTorch; --model/--layer/--method are then ignored")
    add_picture_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.topk < 1:
        raise InputError(f"--topk must be at least 1, got {args.topk}")
    paths = list(iter_image_paths(args.paths))
    if not paths:
        raise InputError(f"no image files found in {', '.join(args.paths)}")
    if args.runtime:
        from export import load

        if args.aug_smooth or args.eigen_smooth:
            raise InputError("--aug-smooth/--eigen-smooth are for the eager explainer; exported graphs compute one map")
        explainer = load(args.runtime, device=args.device)
        if explainer.info.part != "full":
            raise InputError(f"{args.runtime} is a part={explainer.info.part!r} graph; explaining images needs part='full'")
        what = f"{explainer.info.method} at {explainer.info.layer}, {explainer.backend}"
    else:
        loaded = model_from_args(args)
        explainer = Explainer(loaded.model.to(args.device), args.layer or loaded.layer, args.method,
                              reshape=args.reshape or loaded.reshape)
        what = f"{explainer.method.name} at {explainer.layer} of {loaded.name}"
    preprocess = Preprocess(resize=args.resize)
    os.makedirs(args.out, exist_ok=True)

    failures = 0
    written = 0
    with tqdm(total=len(paths), unit="img", desc="explain", file=sys.stderr) as bar:
        for start in range(0, len(paths), args.batch_size):
            names, images = [], []
            for path in paths[start:start + args.batch_size]:
                try:
                    images.append(load_image(path))
                    names.append(path)
                except (FileNotFoundError, InputError) as exc:
                    failures += 1
                    tqdm.write(f"error: {exc}", file=sys.stderr)
                    bar.update(1)
            if not images:
                continue
            results = explain_batch(explainer, names, images, preprocess, args.out, args.classes,
                                    args.topk, args.colormap, args.alpha, args.device, args.aug_smooth,
                                    args.eigen_smooth)
            for r in results:
                tqdm.write(f"{r.name}: {format_classes(r.classes)}")
                written += len(r.files)
            bar.update(len(images))
    print(f"wrote {written} PNG(s) to {args.out} ({what})")
    if failures:
        print(f"{failures} of {len(paths)} image(s) could not be read", file=sys.stderr)
        return 1
    return 0
