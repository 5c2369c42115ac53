"""``deploycam explain``: overlay PNGs and top classes for image files."""

from __future__ import annotations

import argparse
import os
import sys

from deploycam.cli.args import (
    add_cuda_graphs_arg,
    add_model_args,
    add_onnx_args,
    add_picture_args,
    check_alpha,
    check_cuda_graphs,
    check_device,
    check_onnx_file,
    check_output_dir,
    check_positive,
    preprocessing_kwargs,
)
from explainer.errors import InputError

#: explainer.imaging.VIDEO_SUFFIXES, repeated so the argument checks need no torch import (a test checks they agree)
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="explain image files or directories (overlay PNGs), or a video / camera "
                                       "(an overlaid video)")
    p.add_argument("paths", nargs="*", metavar="IMAGE_OR_DIR", help="image files, or directories of images; or one "
                                                                   "video file (.mp4, .avi, ...: --out is then a video)")
    p.add_argument("--camera", type=int, default=None, metavar="INDEX",
                   help="explain frames from this camera (OpenCV's index, e.g. 0) into the --out video")
    p.add_argument("--latency", action="store_true",
                   help="video: explain and write each frame as it arrives (default: batches of --batch-size)")
    p.add_argument("--max-frames", type=int, default=None, help="video: stop after this many frames")
    add_model_args(p)
    target = p.add_mutually_exclusive_group()
    target.add_argument("--class", dest="classes", type=int, nargs="+", metavar="K",
                        help="explain these class indices (default: the top class)")
    target.add_argument("--topk", type=int, default=1, help="explain each image's top-k classes (default 1)")
    p.add_argument("--out", default="deploycam-out",
                   help="directory for the PNGs (default ./deploycam-out); inputs from several folders keep "
                        "their relative paths, so no two outputs share a name")
    p.add_argument("--overwrite", action="store_true",
                   help="replace PNGs an earlier run left in --out (by default the run stops before any work)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    add_cuda_graphs_arg(p)
    p.add_argument("--aug-smooth", action="store_true",
                   help="average over flips and intensity changes (6x the cost; eager only)")
    p.add_argument("--eigen-smooth", action="store_true",
                   help="first principal component of the channel contributions instead of their sum (eager only)")
    p.add_argument("--runtime", default=None, metavar="FILE",
                   help="explain with an exported graph (.onnx via ONNX Runtime or --backend, .pt via TorchScript, "
                        ".pt2 via AOTInductor; part full) "
                        "instead of eager PyTorch; --model/--layer/--method are then ignored")
    p.add_argument("--backend", choices=("onnxruntime", "openvino", "opencv"), default="onnxruntime",
                   help="what runs a --runtime .onnx file: ONNX Runtime (default), OpenVINO (float32) or OpenCV 5's "
                        "DNN engine; each checks itself against ONNX Runtime when it opens the file")
    p.add_argument("--score-threshold", type=float, default=0.5,
                   help="detectors (--model fasterrcnn_*, retinanet_*, fcos_*, ssd*): explain detections scoring "
                        "at least this (default 0.5); --topk boxes per image")
    p.add_argument("--size", type=int, default=None,
                   help="model input size in pixels (default 224; an --onnx file with a fixed input size sets its own)")
    add_onnx_args(p)
    add_picture_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0 when every image was explained, 1 when some could not be read (they are reported and
    skipped), 2 for bad arguments (checked before any work; nothing is written)."""
    check_positive("--max-frames", args.max_frames)
    if args.camera is not None or (len(args.paths) == 1 and args.paths[0].lower().endswith(VIDEO_SUFFIXES)):
        return explain_video_cmd(args)
    if not args.paths:
        raise InputError("give image files or directories, a video file, or --camera INDEX")
    check_positive("--batch-size", args.batch_size)
    check_positive("--topk", args.topk)
    check_alpha(args.alpha)
    check_output_dir(args.out)
    check_positive("--size", args.size)
    check_onnx_file(args)
    preprocessing_kwargs(args)  # bad --std/--scale fail here, before any work
    if args.backend != "onnxruntime" and not (args.runtime or "").endswith(".onnx"):
        raise InputError(f"--backend {args.backend} runs exported .onnx files: give --runtime FILE.onnx")
    if args.runtime and args.onnx:
        raise InputError("give either --runtime (an exported explanation) or --onnx (a model to explain), not both")
    if args.runtime and (args.aug_smooth or args.eigen_smooth):
        raise InputError("--aug-smooth/--eigen-smooth are for the eager explainer; exported graphs compute one map")

    from tqdm import tqdm

    from deploycam.cli.common import (
        ExplainerSpec,
        describe,
        existing_outputs,
        explain_batch,
        format_classes,
        iter_image_paths,
        output_stems,
        preprocess_for,
    )
    from explainer.imaging import load_image
    from explainer.methods import get_method

    device = check_device(args.device)
    check_cuda_graphs(args, device)
    paths = list(iter_image_paths(args.paths))
    if not paths:
        raise InputError(f"no image files found in {', '.join(args.paths)}")
    from explainer.detection.yolo_onnx import is_detector_file
    from export.detector_runtime import detector_info

    if args.runtime and args.runtime.lower().endswith(".onnx") and os.path.isfile(args.runtime) \
            and detector_info(args.runtime) is not None:  # a detector explanation graph
        from deploycam.cli.detect_cmd import explain_detector

        return explain_detector(args, paths, output_stems(paths), device)
    spec = ExplainerSpec.from_args(args, device)
    if args.runtime:
        explain, size = spec.build_sized()  # an exported graph's runtime: the file says which method it computes
        if explain.info.part != "full":
            raise InputError(f"{args.runtime} is a part={explain.info.part!r} graph; explaining images needs part='full'")
        method = explain.info.method
    else:
        method = get_method(args.method).name  # an unknown name fails here, before the model loads
    stems = output_stems(paths)
    from explainer.models import detector_names

    if not args.runtime and (args.model in detector_names() if not args.onnx else is_detector_file(args.onnx)):
        if not 0.0 <= args.score_threshold <= 1.0:
            raise InputError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
        if args.cuda_graphs:
            raise InputError("--cuda-graphs is for classifiers; detector explanations run eagerly")
        from deploycam.cli.detect_cmd import explain_detector

        return explain_detector(args, paths, stems, device)
    clashes = existing_outputs(args.out, stems.values(), method)
    if clashes and not args.overwrite:
        shown = ", ".join(clashes[:3]) + (f" and {len(clashes) - 3} more" if len(clashes) > 3 else "")
        raise InputError(f"{len(clashes)} file(s) in {args.out} would be overwritten ({shown}); "
                         "pass --overwrite, or another --out")
    if not args.runtime:
        explain, size = spec.build_sized()
    what = describe(explain, os.path.basename(args.onnx) if args.onnx else None if args.runtime else args.model)
    preprocess = preprocess_for(args, size)
    os.makedirs(args.out, exist_ok=True)

    failures = 0
    written: set[str] = set()
    with tqdm(total=len(paths), unit="img", desc="explain", file=sys.stderr) as bar:
        for start in range(0, len(paths), args.batch_size):
            names, images = [], []
            for path in paths[start:start + args.batch_size]:
                try:
                    images.append(load_image(path))
                    names.append(path)
                except (FileNotFoundError, InputError) as exc:
                    failures += 1
                    tqdm.write(f"error: {exc} (skipped)", file=sys.stderr)
                    bar.update(1)
            if not images:
                continue
            results = explain_batch(explain, names, images, preprocess, args.out, args.classes,
                                    args.topk, args.colormap, args.alpha, device, args.aug_smooth,
                                    args.eigen_smooth, stems=[stems[n] for n in names])
            for r in results:
                tqdm.write(f"{r.name}: {format_classes(r.classes)}")
                written.update(f for f in r.files if os.path.isfile(f))
            bar.update(len(images))
    print(f"wrote {len(written)} PNG(s) to {args.out} ({what})")
    if failures:
        print(f"{failures} of {len(paths)} image(s) could not be read and were skipped", file=sys.stderr)
        return 1
    return 0


def explain_video_cmd(args: argparse.Namespace) -> int:
    """A video file or camera into an overlaid video (``--out``: a video file, or a folder for ``{stem}_cam.mp4``)."""
    check_positive("--batch-size", args.batch_size)
    check_positive("--size", args.size)
    check_alpha(args.alpha)
    check_onnx_file(args)
    if args.camera is not None and args.paths:
        raise InputError("give a video file or --camera, not both")
    if args.camera is not None and args.max_frames is None:
        raise InputError("--camera needs --max-frames N (a camera never ends)")
    if args.classes or args.topk != 1 or args.aug_smooth or args.eigen_smooth:
        raise InputError("videos explain each frame's top class (no --class/--topk/--aug-smooth/--eigen-smooth)")
    source = args.camera if args.camera is not None else args.paths[0]
    if isinstance(source, str) and not os.path.isfile(source):
        raise InputError(f"no video file at {source}")
    stem = f"camera{source}" if isinstance(source, int) else os.path.splitext(os.path.basename(source))[0]
    out = args.out if args.out.lower().endswith(VIDEO_SUFFIXES) else os.path.join(args.out, f"{stem}_cam.mp4")
    from explainer.video import check_not_the_input

    check_not_the_input(source, out)  # even with --overwrite
    if os.path.exists(out) and not args.overwrite:
        raise InputError(f"{out} exists; pass --overwrite, or another --out")
    device = check_device(args.device)
    check_cuda_graphs(args, device)

    from tqdm import tqdm

    from deploycam.cli.common import ExplainerSpec, describe, preprocess_for
    from explainer.video import explain_video

    explain, size = ExplainerSpec.from_args(args, device).build_sized()
    what = describe(explain)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with tqdm(total=args.max_frames, unit="frame", desc="explain", file=sys.stderr) as bar:
        def progress(frames: int, fps: float) -> None:
            bar.update(1)
            bar.set_postfix(fps=f"{fps:.1f}")

        run = explain_video(source, explain, out, preprocess_for(args, size), batch_size=args.batch_size,
                            latency=args.latency, colormap=args.colormap, alpha=args.alpha, max_frames=args.max_frames,
                            device=device, on_frame=progress)
    mode = "one frame at a time" if args.latency else f"batches of {args.batch_size}"
    print(f"wrote {run.out}: {run.frames} frame(s) in {run.seconds:.1f} s, {run.fps:.1f} frames/s ({mode}; {what})")
    if run.cut_short:
        print(f"{source}: decoding stopped after {run.frames} of the {run.declared_frames} frames its container "
              "declares (a truncated or damaged file?)", file=sys.stderr)
        return 1
    return 0
