"""``deploycam explain IMG --model <detector>`` (or ``--onnx yolo.onnx``): per-box maps drawn with their boxes."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from explainer.errors import InputError


def explain_detector(args: argparse.Namespace, paths: Sequence[str], stems: dict[str, str], device: str) -> int:
    """Explain each image's ``--topk`` best detections (scoring at least ``--score-threshold``): one PNG per
    box (its map, every explained box outlined, this one captioned first) and a grid per image.
    Exit 0, or 1 when some images could not be read."""
    import torch
    from tqdm import tqdm

    from explainer.core import Explainer
    from explainer.detection.explainer import ExplainedDetection
    from explainer.detection.yolo import LETTERBOX_SIZE, letterbox
    from explainer.imaging import load_image
    from explainer.methods import get_method
    from explainer.models import YOLO_NAMES, detector_categories, load_detector
    from explainer.overlay import draw_boxes, make_grid, overlay, save_png

    if args.classes:
        raise InputError("--class is for classifiers; detectors explain their detections (--topk, --score-threshold)")
    import glob

    runtime = None
    if args.runtime:  # a YOLO explanation exported to ONNX: the graph says its method, size and box count
        from export import load

        runtime = load(args.runtime, device=device, runtime=args.backend)
        if runtime.info.targets != "detections":
            raise InputError(f"{args.runtime} explains given boxes (targets='boxes'); the command line runs "
                             "graphs that explain their own detections (deploycam export --targets detections)")
        method = runtime.info.method
    else:
        method = get_method(args.method).name
    clashes = [f for stem in stems.values() for f in glob.glob(os.path.join(glob.escape(args.out),
                                                                             f"{glob.escape(stem)}_*_{method}.png"))]
    if clashes and not args.overwrite:
        raise InputError(f"{len(clashes)} file(s) in {args.out} would be overwritten ({clashes[0]}, ...); "
                         "pass --overwrite, or another --out")
    size: int | tuple[int, int] = args.size or LETTERBOX_SIZE
    if runtime is not None:
        if args.size and (args.size, args.size) != tuple(runtime.info.image_size):
            raise InputError(f"{args.runtime} takes {runtime.info.image_size[0]}x{runtime.info.image_size[1]} "
                             f"inputs; drop --size {args.size}")
        size = tuple(runtime.info.image_size)
        names, label, yolo = None, f"{os.path.basename(args.runtime)} ({runtime.backend})", True

        def explain(x: torch.Tensor) -> list[ExplainedDetection]:
            return runtime.explain_detections(x.cpu())[0]
    elif args.onnx:  # an ultralytics YOLO exported to ONNX: the file's own weights, class names and input size
        if args.weights:
            raise InputError("--weights is for --model; an --onnx file holds its own weights")
        exp = Explainer.for_detector(args.onnx, args.layer or "detect", args.method)
        exp.model.to(device)
        names = exp.parts.class_names
        if exp.parts.input_size is not None:
            if args.size and (args.size, args.size) != exp.parts.input_size:
                raise InputError(f"{args.onnx} takes {exp.parts.input_size[0]}x{exp.parts.input_size[1]} inputs; "
                                 f"drop --size {args.size}")
            size = exp.parts.input_size
        label = os.path.basename(args.onnx)
        yolo = True
    else:
        model = load_detector(args.model, args.weights, args.score_threshold).to(device)
        if args.weights is None:
            print(f"note: {args.model} has random weights (nothing is downloaded); pass --weights PATH to a saved "
                  "state_dict for real detections", file=sys.stderr)
        target = args.layer or ("backbone" if args.model.startswith("ssd") else "fpn")
        exp = Explainer.for_detector(model, target, args.method)
        names = detector_categories(args.model)
        label = args.model
        yolo = args.model in YOLO_NAMES  # letterboxed to 640 (stride 32); boxes and maps drawn back on the picture
    layers = ", ".join(runtime.info.layers if runtime is not None else exp.layers)
    if runtime is None:
        def explain(x: torch.Tensor) -> list[ExplainedDetection]:
            return exp.explain_detections(x, score_threshold=args.score_threshold, max_boxes=args.topk)[0]

    os.makedirs(args.out, exist_ok=True)
    failures, written = 0, 0
    for path in tqdm(paths, unit="img", desc="explain", file=sys.stderr):
        try:
            image = load_image(path)
        except (FileNotFoundError, InputError) as exc:
            failures += 1
            tqdm.write(f"error: {exc} (skipped)", file=sys.stderr)
            continue
        if yolo:
            tensor, box = letterbox(image, size=size)
            x = tensor[None].to(device)
        else:
            x = torch.from_numpy(image).permute(2, 0, 1).float().div(255.0)[None].to(device)
        found = explain(x)
        if yolo:
            found = [ExplainedDetection(box.boxes_to_original(d.box[None])[0], d.label, d.score,
                                        torch.from_numpy(box.map_to_original(d.cam))) for d in found]
        captions = [f"{names[d.label] if names and d.label < len(names) else d.label} {d.score:.2f}" for d in found]
        base = os.path.join(args.out, stems[path])
        os.makedirs(os.path.dirname(base), exist_ok=True)
        tiles = []
        for j, (d, caption) in enumerate(zip(found, captions)):
            picture = draw_boxes(overlay(image, d.cam, args.colormap, args.alpha), d.box[None], [caption])
            save_png(f"{base}_box{j}_{d.label}_{method}.png", picture)
            tiles.append(d.cam)
            written += 1
        if len(found) > 1:
            boxed = draw_boxes(image, torch.stack([d.box for d in found]), captions)
            save_png(f"{base}_grid_{method}.png", make_grid(boxed, tiles, captions, args.colormap, args.alpha))
            written += 1
        tqdm.write(f"{path}: {', '.join(captions) if captions else 'no detection above the threshold'}")
    print(f"wrote {written} PNG(s) to {args.out} ({method} at {layers} of {label})")
    if failures:
        print(f"{failures} of {len(paths)} image(s) could not be read and were skipped", file=sys.stderr)
        return 1
    return 0
