"""``deploycam evaluate``: faithfulness metrics and time per image for several methods."""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

from deploycam.cli.args import add_model_args, check_output_dir, check_positive
from explainer.errors import InputError

COLUMNS = ("ms/img", "deletion", "insertion", "avg drop %", "increase %")
ROAD_COLUMN = "ROAD"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="faithfulness metrics (deletion/insertion AUC, average drop) per method")
    p.add_argument("paths", nargs="+", metavar="IMAGE_OR_DIR")
    add_model_args(p, with_method=False)
    p.add_argument("--method", default="gradcam,gradcam++,layercam,eigencam",
                   help="comma-separated methods (default gradcam,gradcam++,layercam,eigencam; "
                        "`deploycam methods` lists them)")
    p.add_argument("--steps", type=int, default=20, help="deletion/insertion steps (default 20)")
    p.add_argument("--baseline", default="blur", choices=("blur", "mean", "zero"), help="what removed pixels become")
    p.add_argument("--road", action="store_true",
                   help="add ROAD (remove-and-debias, (LeRF - MoRF) / 2, higher is better; ~4 s per image and method "
                        "at 224 px on 2 cores)")
    p.add_argument("--max-images", type=int, default=None, help="use at most this many images")
    p.add_argument("--repeat", type=int, default=3,
                   help="timed calls per method after one warm-up call; ms/img is their median (default 3)")
    p.add_argument("--out", default="deploycam-evaluate", help="directory for evaluate.json and evaluate.png")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0, or 2 for bad arguments (checked before the model loads) and unreadable images."""
    check_positive("--steps", args.steps)
    check_positive("--max-images", args.max_images)
    check_positive("--repeat", args.repeat)
    check_output_dir(args.out)

    import torch
    from tqdm import tqdm

    from deploycam.cli.common import iter_image_paths, model_from_args
    from explainer.core import Explainer
    from explainer.imaging import Preprocess, load_image
    from explainer.methods import get_method
    from explainer.metrics import average_drop, deletion_auc, increase_in_confidence, insertion_auc, road_combined
    from explainer.timing import median_ms

    # unknown names fail here with "did you mean"; a method named twice (or by an alias) runs once
    methods = list(dict.fromkeys(get_method(m.strip()).name for m in args.method.split(",") if m.strip()))
    if not methods:
        raise InputError("--method names no method")
    paths = list(iter_image_paths(args.paths))[: args.max_images]
    if not paths:
        raise InputError(f"no image files found in {', '.join(args.paths)}")
    loaded = model_from_args(args)
    preprocess = Preprocess()
    x = torch.stack([preprocess(load_image(p))[0] for p in paths])
    with torch.no_grad():
        targets = loaded.model(x).argmax(1)
    base = Explainer(loaded.model, args.layer or loaded.layer, methods[0], progress=False,
                     reshape=args.reshape or loaded.reshape)
    model = loaded.model
    rows: dict[str, dict[str, float]] = {}
    with tqdm(total=len(methods) * len(paths), unit="img", desc="evaluate", file=sys.stderr) as bar:
        for name in methods:
            explainer = base.with_method(name)
            bar.set_postfix_str(name)
            cams = explainer(x, targets).cams  # also the warm-up call
            ms = median_ms(functools.partial(explainer, x, targets), warmup=0, repeat=args.repeat) / len(paths)
            sums = dict.fromkeys(COLUMNS[1:] + ((ROAD_COLUMN,) if args.road else ()), 0.0)
            for i in range(len(paths)):
                one, cam, target = x[i:i + 1], cams[i:i + 1], targets[i:i + 1]
                sums["deletion"] += float(deletion_auc(model, one, cam, target, args.steps, args.baseline)[0])
                sums["insertion"] += float(insertion_auc(model, one, cam, target, args.steps, args.baseline)[0])
                sums["avg drop %"] += average_drop(model, one, cam, target)
                sums["increase %"] += increase_in_confidence(model, one, cam, target)
                if args.road:
                    sums[ROAD_COLUMN] += float(road_combined(model, one, cam, target)[0])
                bar.update(1)
            rows[name] = {"ms/img": ms, **{column: total / len(paths) for column, total in sums.items()}}
    columns = COLUMNS + ((ROAD_COLUMN,) if args.road else ())
    print(f"{len(paths)} image(s), {loaded.name} @ {base.layer}; deletion lower is better, insertion higher"
          + (", ROAD higher" if args.road else "")
          + f"; ms/img: median of {args.repeat} warm call(s) on the whole batch, per image")
    print(f"{'method':<22}" + "".join(f"{c:>13}" for c in columns))
    for name, row in rows.items():
        print(f"{name:<22}" + "".join(f"{row[c]:>13.3f}" for c in columns))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "evaluate.json"), "w", encoding="utf-8") as out:
        json.dump({"model": loaded.name, "layer": base.layer, "images": paths, "results": rows}, out, indent=1)
    _plot(rows, columns, os.path.join(args.out, "evaluate.png"))
    print(f"wrote {os.path.join(args.out, 'evaluate.json')} and evaluate.png")
    return 0


def _plot(rows: dict, columns: tuple[str, ...], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(columns), figsize=(3 * len(columns), 3))
    for ax, column in zip(axes, columns):
        ax.bar(list(rows), [row[column] for row in rows.values()], color="tab:blue")
        ax.set_title(column, fontsize=9)
        ax.tick_params(axis="x", labelrotation=60, labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
