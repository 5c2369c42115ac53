"""``deploycam demo``: the bundled real model on the bundled real photos, end to end."""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from explainer.cli.common import add_picture_args, explain_batch, format_classes
from explainer.core import Explainer
from explainer.imaging import Preprocess, sample_images
from explainer.labels import label_of
from explainer.methods import METHODS
from explainer.models import load_model
from explainer.overlay import make_grid, save_png
from explainer.timing import median_ms

CAT, ESPRESSO = 285, 967


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="explain the bundled photos with the bundled EfficientNet-Lite0, time it")
    p.add_argument("--out", default="deploycam-demo", help="directory for the PNGs (default ./deploycam-demo)")
    p.add_argument("--repeat", type=int, default=15, help="timed runs per latency row (median reported)")
    add_picture_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    loaded = load_model("efficientnet-lite0")
    model = loaded.model
    print(f"model: {loaded.name} ({loaded.weights}), target layer {loaded.layer!r}")
    os.makedirs(args.out, exist_ok=True)
    preprocess = Preprocess(resize=args.resize)
    photos = sample_images()
    explainer = Explainer(model, loaded.layer, "gradcam")

    # 1. Each photo, its top-3 classes, one overlay per class and a grid.
    results = explain_batch(explainer, [f"{n}.png" for n in photos], list(photos.values()), preprocess,
                            args.out, topk=3, colormap=args.colormap, alpha=args.alpha)
    for r in results:
        print(f"  {r.name:<12} {format_classes(r.classes)}")

    # 2. The two photos side by side: one map per class must light up its own half.
    views = [preprocess.view(photos["chelsea"]), preprocess.view(photos["coffee"])]
    pair = np.concatenate(views, axis=1)  # (224, 448, 3)
    x = preprocess.to_tensor(pair).unsqueeze(0)
    both = explainer(x, [[CAT, ESPRESSO]])
    titles = [f"{c} {label_of(c)}" for c in (CAT, ESPRESSO)]
    pair_path = os.path.join(args.out, "side_by_side_gradcam.png")
    save_png(pair_path, make_grid(pair, list(both.cams[0]), titles, args.colormap, args.alpha))
    half = both.cams.shape[-1] // 2
    for k, (cls, title) in enumerate(zip((CAT, ESPRESSO), titles)):
        left, right = both.cams[0, k, :, :half].mean().item(), both.cams[0, k, :, half:].mean().item()
        print(f"  side by side: map for {title!r} mean left (cat) {left:.2f} / right (coffee) {right:.2f}")
    print(f"wrote {sum(len(r.files) for r in results) + 1} PNGs to {os.path.abspath(args.out)}")

    # 3. Latency: each method against a plain inference_mode forward, same run, batch 1.
    batch = torch.stack([preprocess(photos["chelsea"])[0]])
    print(f"\nlatency, {loaded.name} @ {loaded.layer}, batch 1, 224x224, CPU, "
          f"{torch.get_num_threads()} threads (median of {args.repeat}):")

    def plain() -> None:
        with torch.inference_mode():
            model(batch)

    floor = median_ms(plain, repeat=args.repeat)
    print(f"  {'plain inference':<22} {floor:8.2f} ms   1.00x")
    for name in METHODS:
        if name == "cam":
            continue  # needs a pooling + linear head: not EfficientNet-Lite0's _conv_head
        method = explainer.with_method(name)
        ms = median_ms(lambda: method(batch), repeat=args.repeat)
        print(f"  {name:<22} {ms:8.2f} ms   {ms / floor:.2f}x")
    print(f"\ndemo done in {time.perf_counter() - t0:.1f} s")
    return 0
