"""``deploycam export``: write the explanation as an ONNX or TorchScript graph, and check it."""

from __future__ import annotations

import argparse
import os
import sys
import time

from deploycam.cli.args import add_model_args, add_onnx_args, check_onnx_file, check_output_file, check_positive
from explainer.errors import DeployCamError, InputError

SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".pth": "torchscript", ".pt2": "aoti"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the explanation (gradient inside) to ONNX, TorchScript or an "
                                      "AOTInductor package")
    add_model_args(p)
    p.add_argument("--format", choices=("onnx", "torchscript", "aoti"), default=None,
                   help="graph format (default: from --out's suffix: .onnx, .pt, or .pt2 for an AOTInductor "
                        "package, compiled ahead of time for C++: about a minute)")
    p.add_argument("--part", choices=("full", "head"), default="full",
                   help="full: image -> logits, cam; head: layer activations -> logits, cam")
    p.add_argument("--out", required=True, help="output file (.onnx, .pt or .pt2)")
    p.add_argument("--size", type=int, default=None,
                   help="input image size the graph is made for (default 224, or the --onnx file's fixed size)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset, 18 to 23 (default: the exporter's)")
    p.add_argument("--static-batch", type=int, default=None, metavar="N",
                   help="fix the batch size to N (ONNX, AOTInductor; default dynamic)")
    p.add_argument("--no-check", action="store_true", help="skip the comparison with eager PyTorch")
    p.add_argument("--score-threshold", type=float, default=None,
                   help="detectors: torchvision's (TorchScript) own score threshold, kept in the graph (default "
                        "0.5); YOLO (ONNX): the least score of an explained detection (default 0.25)")
    p.add_argument("--max-boxes", type=int, default=10,
                   help="YOLO (ONNX): how many of each image's best detections the graph explains (default 10)")
    p.add_argument("--targets", choices=("detections", "boxes"), default="detections",
                   help="YOLO (ONNX): explain the graph's own best detections, or reference boxes given as inputs "
                        "(ref_boxes (N, K, 4), ref_labels (N, K))")
    add_onnx_args(p, preprocessing=False)
    p.set_defaults(run=run)


def _step(message: str) -> float:
    print(f"  {message}...", file=sys.stderr, flush=True)
    return time.perf_counter()


def run(args: argparse.Namespace) -> int:
    """Exit 0 when the file is written (and matches eager), 2 for bad arguments (checked before any work)
    or a file that does not match."""
    fmt = args.format or SUFFIXES.get(os.path.splitext(args.out)[1].lower())
    if fmt is None:
        raise InputError(f"cannot tell the format from {args.out!r}: pass --format onnx|torchscript|aoti")
    check_positive("--size", args.size)
    check_positive("--static-batch", args.static_batch)
    check_onnx_file(args)
    if fmt == "torchscript" and (args.opset is not None or args.static_batch is not None):
        raise InputError("--opset and --static-batch are ONNX options; TorchScript graphs take any batch")
    if fmt == "aoti" and args.opset is not None:
        raise InputError("--opset is an ONNX option")
    if fmt == "aoti" and not args.out.endswith(".pt2"):
        raise InputError(f"an AOTInductor package must end in .pt2 (aoti_load_package requires it), got {args.out!r}")
    if args.opset is not None and not 18 <= args.opset <= 23:
        raise InputError(f"--opset must be between 18 and 23, got {args.opset}")
    check_output_file(args.out)
    from explainer.models import detector_names

    if not args.onnx and args.model in detector_names():
        return export_detector(args, fmt)

    start = _step(f"loading {args.onnx or args.model}")
    import torch

    from deploycam.cli.common import model_from_args, onnx_explainer_from_args
    from explainer.core import Explainer
    from explainer.methods import get_method
    from export import compare, load, to_aoti, to_onnx, to_torchscript

    method = get_method(args.method)
    if args.onnx:
        explainer, size = onnx_explainer_from_args(args, method.name)
    else:
        loaded = model_from_args(args)
        explainer = Explainer(loaded.model, args.layer or loaded.layer, method,
                              reshape=args.reshape or loaded.reshape)
        size = args.size or 224
    gen = torch.Generator().manual_seed(0)

    def images(n: int) -> torch.Tensor:  # random images as the model takes them
        x = torch.randn(n, 3, size, size, generator=gen)
        return x.permute(0, 2, 3, 1).contiguous() if explainer.input_layout == "nhwc" else x

    example = images(args.static_batch or 2)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    _step(f"tracing and writing the {fmt} graph of {method.name} at {explainer.layer} "
          f"({'about a minute: C++ compile' if fmt == 'aoti' else '10-60 s'})")
    if fmt == "onnx":
        info = to_onnx(explainer, args.out, example, part=args.part, opset=args.opset,
                       dynamic_batch=args.static_batch is None)
    elif fmt == "aoti":
        info = to_aoti(explainer, args.out, example, part=args.part, dynamic_batch=args.static_batch is None)
    else:
        info = to_torchscript(explainer, args.out, example, part=args.part)
    size_mb = os.path.getsize(args.out) / 2**20
    batch = f"batch {args.static_batch}" if args.static_batch else "dynamic batch"
    print(f"wrote {args.out} ({fmt}, part={info.part}, {info.method} at {info.layer}, "
          f"input (N, {', '.join(map(str, info.input_shape))}), {batch}, {size_mb:.1f} MB, "
          f"{time.perf_counter() - start:.0f} s)")
    if args.no_check:
        return 0
    _step("comparing with eager PyTorch on a fresh batch")
    fresh = images(args.static_batch or 3)
    result = compare(explainer, load(args.out), fresh)
    print(f"check on a fresh batch of {len(fresh)} ({result.backend}): max |cam - eager| = {result.max_diff:.2e}, "
          f"same predicted classes: {result.same_classes}")
    if not result.ok:
        raise DeployCamError("the exported graph does not match eager PyTorch (max diff > 1e-4 or other classes)")
    return 0


def export_detector(args: argparse.Namespace, fmt: str) -> int:
    """A torchvision detector's explanation as a TorchScript graph ``(images, labels, boxes) -> (detections,
    cams)`` (see :mod:`export.detection_graph`), checked against eager on random images' top detections;
    a YOLO's as an ONNX graph (:func:`export_yolo`)."""
    from explainer.models import YOLO_NAMES

    if args.model in YOLO_NAMES:
        return export_yolo(args, fmt)
    if args.score_threshold is None:
        args.score_threshold = 0.5
    if fmt != "torchscript":
        raise InputError("torchvision detector explanations export to TorchScript only (--out x.pt): their NMS "
                         "and RoI selection have no exportable gradient (YOLO's export to ONNX; see the README)")
    if args.part != "full":
        raise InputError("a detector explanation exports as one graph from the images (--part full)")
    if not 0.0 <= args.score_threshold <= 1.0:
        raise InputError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    start = _step(f"loading {args.model}")
    import torch

    from explainer.core import Explainer
    from explainer.models import load_detector as load_detector_model
    from export import load_detector, to_torchscript

    model = load_detector_model(args.model, args.weights, args.score_threshold)
    if args.weights is None:
        print(f"note: {args.model} has random weights (nothing is downloaded); pass --weights PATH for real ones",
              file=sys.stderr)
    layer = args.layer or ("backbone" if args.model.startswith("ssd") else "fpn")
    explainer = Explainer.for_detector(model, layer, args.method)
    size = args.size or 320
    gen = torch.Generator().manual_seed(0)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    _step(f"scripting and writing the detector graph of {explainer.method.name} at {layer}")
    info = to_torchscript(explainer, args.out, torch.rand(1, 3, size, size, generator=gen))
    print(f"wrote {args.out} (torchscript, {info.detector}, {info.method} at {', '.join(info.layers)}, input "
          f"(N, 3, H, W) in [0, 1] + labels (N, B), boxes (N, B, 4), {os.path.getsize(args.out) / 2**20:.1f} MB, "
          f"{time.perf_counter() - start:.0f} s)")
    if args.no_check:
        return 0
    _step("comparing with eager PyTorch on fresh random images (each image's top detection)")
    fresh = torch.rand(2, 3, size, size, generator=gen)
    try:
        expected = explainer(fresh)
    except InputError as exc:
        print(f"check skipped: {exc} (random images; pass --score-threshold 0 to check)")
        return 0
    _, cams = load_detector(args.out)(fresh)
    diff = float((cams - expected.cams).abs().max())
    print(f"check on a fresh batch of 2 (torchscript/cpu): max |cam - eager| = {diff:.2e}")
    if diff > 1e-4:
        raise DeployCamError("the exported graph does not match eager PyTorch (max diff > 1e-4)")
    return 0


def export_yolo(args: argparse.Namespace, fmt: str) -> int:
    """A YOLO's explanation as an ONNX graph (:mod:`export.detector_onnx`), checked against eager on the
    bundled photo (letterboxed) and a random image: the same detections and maps."""
    if fmt != "onnx":
        raise InputError(f"YOLO explanations export to ONNX (--out x.onnx), not {fmt}")
    if args.part != "full" or args.static_batch is not None:
        raise InputError("a detector explanation exports as one graph from the images with a dynamic batch "
                         "(no --part head, no --static-batch)")
    threshold = 0.25 if args.score_threshold is None else args.score_threshold
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"--score-threshold must be in [0, 1], got {threshold}")
    check_positive("--max-boxes", args.max_boxes)
    start = _step(f"loading {args.model}")
    import torch

    from explainer.core import Explainer
    from explainer.detection.yolo import LETTERBOX_SIZE, letterbox
    from explainer.imaging import sample_images
    from explainer.models import load_detector as load_detector_model
    from export import load, to_onnx

    model = load_detector_model(args.model, args.weights)
    if args.weights is None:
        print(f"note: {args.model} has random weights (nothing is downloaded; few or no detections); pass "
              "--weights PATH to an ultralytics checkpoint for real ones", file=sys.stderr)
    explainer = Explainer.for_detector(model, args.layer or "detect", args.method)
    size = args.size or LETTERBOX_SIZE
    photo, _ = letterbox(sample_images()["chelsea"], size=size)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    _step(f"tracing and writing the ONNX graph of {explainer.method.name} at the Detect head's inputs "
          "(about a minute)")
    info = to_onnx(explainer, args.out, photo[None], opset=args.opset, targets=args.targets,
                   max_boxes=args.max_boxes, score_threshold=threshold)
    inputs = "images (N, 3, H, W) in [0, 1]" + (" + ref_boxes (N, K, 4), ref_labels (N, K)"
                                                 if info.targets == "boxes" else "")
    print(f"wrote {args.out} (onnx, {info.detector}, {info.method} at {len(info.layers)} levels, input {inputs} at "
          f"{size}x{size}, targets={info.targets}, {os.path.getsize(args.out) / 2**20:.1f} MB, "
          f"{time.perf_counter() - start:.0f} s)")
    if args.no_check:
        return 0
    _step("comparing with eager PyTorch (the bundled photo and a random image, letterboxed)")
    gen = torch.Generator().manual_seed(0)
    fresh = torch.stack([photo, torch.rand(3, size, size, generator=gen)])
    eager = explainer.explain_detections(fresh, score_threshold=threshold, max_boxes=args.max_boxes)
    runtime = load(args.out)
    if info.targets == "detections":
        found = runtime.explain_detections(fresh)
        same = [len(d) for d in found] == [len(d) for d in eager] and all(
            a.label == b.label for da, db in zip(eager, found) for a, b in zip(da, db))
        pairs = [(a.cam, b.cam) for da, db in zip(eager, found) for a, b in zip(da, db)]
    else:
        k = max(1, max(len(d) for d in eager))
        boxes, labels = torch.zeros(2, k, 4), torch.full((2, k), -1, dtype=torch.int64)
        for i, detections in enumerate(eager):
            for j, d in enumerate(detections):
                boxes[i, j], labels[i, j] = d.box, d.label
        out = runtime(fresh, boxes, labels)
        same = bool((out["labels"] == labels).all())
        pairs = [(d.cam, out["cams"][i, j]) for i, detections in enumerate(eager) for j, d in enumerate(detections)]
    if not pairs:
        print("check: no detection above the threshold in either image (random weights?); nothing to compare")
        return 0 if same else 1
    diff = max(float((a - b).abs().max()) for a, b in pairs)
    print(f"check on {len(pairs)} detection(s) ({runtime.backend}): same labels {same}, max |cam - eager| = {diff:.2e}")
    if diff > 1e-4 or not same:
        raise DeployCamError("the exported graph does not match eager PyTorch (different detections or max diff "
                             "> 1e-4)")
    return 0
