"""``deploycam evaluate``: faithfulness metrics and time per image for several methods."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from explainer.cli.common import add_model_args, iter_image_paths, model_from_args
from explainer.core import Explainer
from explainer.errors import InputError
from explainer.imaging import Preprocess, load_image
from explainer.methods import get_method
from explainer.metrics import average_drop, deletion_auc, increase_in_confidence, insertion_auc, road_combined

COLUMNS = ("ms/img", "deletion", "insertion", "avg drop %", "increase %")
ROAD_COLUMN = "ROAD"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="faithfulness metrics (deletion/insertion AUC, average drop) per method")
    p.add_argument("paths", nargs="+", metavar="IMAGE_OR_DIR")
    add_model_args(p, with_method=False)
    p.add_argument("--method", default="gradcam,gradcam++,layercam,eigencam",
                   help="comma-separated methods (default gradcam,gradcam++,layercam,eigencam)")
    p.add_argument("--steps", type=int, default=20, help="deletion/insertion steps (default 20)")
    p.add_argument("--baseline", default="blur", choices=("blur", "mean", "zero"), help="what removed pixels become")
    p.add_argument("--road", action="store_true",
                   help="add ROAD (remove-and-debias, (LeRF - MoRF) / 2, higher is better; ~4 s per image and method "
                        "at 224 px on 2 cores)")
    p.add_argument("--max-images", type=int, default=None, help="use at most this many images")
    p.add_argument("--out", default="deploycam-evaluate", help="directory for evaluate.json and evaluate.png")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    methods = [get_method(m.strip()).name for m in args.method.split(",") if m.strip()]
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
    rows = {}
    for name in methods:
        explainer = base.with_method(name)
        start = time.perf_counter()
        cams = explainer(x, targets).cams
        ms = (time.perf_counter() - start) * 1000 / len(paths)
        rows[name] = {
            "ms/img": ms,
            "deletion": float(deletion_auc(loaded.model, x, cams, targets, args.steps, args.baseline).mean()),
            "insertion": float(insertion_auc(loaded.model, x, cams, targets, args.steps, args.baseline).mean()),
            "avg drop %": average_drop(loaded.model, x, cams, targets),
            "increase %": increase_in_confidence(loaded.model, x, cams, targets),
        }
        if args.road:
            rows[name][ROAD_COLUMN] = float(road_combined(loaded.model, x, cams, targets).mean())
        print(f"  {name} done", file=sys.stderr)
    columns = COLUMNS + ((ROAD_COLUMN,) if args.road else ())
    print(f"{len(paths)} image(s), {loaded.name} @ {base.layer}; deletion lower is better, insertion higher"
          + (", ROAD higher" if args.road else ""))
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
