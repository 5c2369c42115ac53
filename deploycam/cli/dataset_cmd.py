"""``deploycam explain-dataset SRC --out results.parquet``: a whole folder or list of images into Parquet rows."""

from __future__ import annotations

import argparse
import os
import sys

from deploycam.cli.args import (
    add_cuda_graphs_arg,
    add_model_args,
    add_onnx_args,
    check_cuda_graphs,
    check_device,
    check_onnx_file,
    check_positive,
)
from explainer.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain-dataset", help="explain every image of a folder or list file into Parquet rows "
                                               "(path, target, label, probability, cam, ...)")
    p.add_argument("source", help="a folder (searched recursively for images and videos), a list file (one path per "
                                  "line), or a video file: every frame of a video is a row (path clip.mp4#frame=N)")
    p.add_argument("--out", required=True, help="output: a folder of Parquet parts, e.g. results.parquet "
                                                "(reads as one table with pyarrow, pandas, DuckDB, Ray)")
    add_model_args(p)
    add_onnx_args(p)
    p.add_argument("--runtime", default=None, metavar="FILE", help="explain with an exported graph (.onnx, .pt, .pt2)")
    p.add_argument("--backend", choices=("onnxruntime", "openvino", "opencv"), default="onnxruntime",
                   help="what runs a --runtime .onnx file")
    p.add_argument("--class", dest="target", type=int, default=None, help="explain this class for every image "
                                                                           "(default: each image's top class)")
    p.add_argument("--topk", type=int, default=None, help="explain each image's k best classes (k rows per image)")
    p.add_argument("--overlays", default=None, metavar="DIR",
                   help="also write an overlay PNG per image and target here (the source's sub-folders kept)")
    p.add_argument("--metrics", default="", help="comma-separated faithfulness columns: deletion,insertion (eager)")
    p.add_argument("--size", type=int, default=None, help="input size (default 224, or the graph's / file's own)")
    p.add_argument("--batch-size", type=int, default=16, help="images per explainer call (default 16)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader processes decoding images (default 2; 0: "
                                                          "in this process)")
    p.add_argument("--rows-per-part", type=int, default=256, help="rows per Parquet part file (default 256)")
    p.add_argument("--resume", action="store_true", help="continue a run: skip the images already in --out")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process and --workers decoders; ray: a Ray Data actor pool (RAY_ADDRESS, or a "
                        "local cluster started for the run), the same rows")
    p.add_argument("--actors", type=int, default=None, help="ray: explainer actors (default: one per CPU, or per GPU)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    add_cuda_graphs_arg(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0 when every image was explained, 1 when some could not be read (they are rows with an error)."""
    for name in ("size", "batch_size", "rows_per_part", "topk", "actors"):
        check_positive("--" + name.replace("_", "-"), getattr(args, name))
    if args.workers < 0:
        raise InputError(f"--workers must be >= 0, got {args.workers}")
    if args.target is not None and args.topk is not None:
        raise InputError("give --class or --topk, not both")
    metrics = [m for m in args.metrics.split(",") if m]
    check_onnx_file(args)
    if not os.path.exists(args.source):
        raise InputError(f"no folder or list file at {args.source}")
    device = check_device(args.device)
    check_cuda_graphs(args, device)

    from deploycam.cli.common import ExplainerSpec
    from explainer.dataset import explain_dataset

    spec = ExplainerSpec.from_args(args, device)
    explainer, size = spec.build_sized()
    result = explain_dataset(args.source, spec if args.engine == "ray" else explainer, args.out,
                             preprocess=_preprocess(args, size), targets=args.target, topk=args.topk,
                             batch_size=args.batch_size, workers=args.workers, resume=args.resume, metrics=metrics,
                             rows_per_part=args.rows_per_part, engine=args.engine, actors=args.actors,
                             overlays=args.overlays)
    print(f"wrote {result.rows} row(s) to {result.out} ({result.images} image(s) in {result.seconds:.1f} s, "
          f"{result.images_per_second:.1f} images/s; {result.errors} unreadable; {result.skipped} already done)")
    if result.errors:
        print(f"{result.errors} file(s) could not be read: see the rows whose 'error' is set", file=sys.stderr)
        return 1
    return 0


def _preprocess(args: argparse.Namespace, size: int):
    from deploycam.cli.common import preprocess_for

    return preprocess_for(args, size)
