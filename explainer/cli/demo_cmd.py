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
    p.add_argument("--no-export", action="store_true", help="skip the ONNX/TorchScript export and their timings")
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

    # 3. Export the explanation (gradient inside) and check it against eager on the photos.
    batch = torch.stack([preprocess(photos["chelsea"])[0]])
    runtimes = {} if args.no_export else _export(explainer, model, loaded.name, batch, args.out)

    # 4. Latency: each method against a plain inference_mode forward, same run, batch 1.
    print(f"\nlatency, {loaded.name} @ {loaded.layer}, batch 1, 224x224, CPU, "
          f"{torch.get_num_threads()} threads (median of {args.repeat}; ratio to the same runtime's plain inference):")

    def plain() -> None:
        with torch.inference_mode():
            model(batch)

    floor = median_ms(plain, repeat=args.repeat)
    print(f"  {'eager plain inference':<34} {floor:8.2f} ms   1.00x")
    for name, spec in METHODS.items():
        if spec.requires_linear_head or name == "scorecam":
            continue  # cam: needs a pooling + linear head; scorecam: 1280 model forwards, seconds per image
        method = explainer.with_method(name)
        repeat = args.repeat if spec.perturbation is None else max(2, args.repeat // 5)
        ms = median_ms(lambda: method(batch), repeat=repeat, warmup=3 if spec.perturbation is None else 1)
        print(f"  {'eager ' + name:<34} {ms:8.2f} ms   {ms / floor:.2f}x")
    if runtimes:
        plain_ort, ort_cam, ts_cam = runtimes["plain"], runtimes["onnx"], runtimes["torchscript"]
        feed = {"input": batch.numpy()}
        ort_floor = median_ms(lambda: plain_ort.run(None, feed), repeat=args.repeat)
        ort_ms = median_ms(lambda: ort_cam(batch), repeat=args.repeat)
        ts_ms = median_ms(lambda: ts_cam(batch), repeat=args.repeat)
        print(f"  {'onnxruntime plain inference':<34} {ort_floor:8.2f} ms   1.00x")
        print(f"  {'onnxruntime gradcam (full graph)':<34} {ort_ms:8.2f} ms   {ort_ms / ort_floor:.2f}x")
        print(f"  {'torchscript gradcam (full graph)':<34} {ts_ms:8.2f} ms   {ts_ms / floor:.2f}x (vs eager plain)")
    print(f"\ndemo done in {time.perf_counter() - t0:.1f} s")
    return 0


def _export(explainer: Explainer, model: torch.nn.Module, name: str, batch: torch.Tensor, out: str) -> dict:
    """Write the gradcam graph as ONNX and TorchScript plus the plain model as ONNX; check them."""
    import onnxruntime as ort

    from export import load, model_to_onnx, to_onnx, to_torchscript

    example = batch.expand(2, -1, -1, -1).contiguous()
    paths = {fmt: os.path.join(out, f"{name}_gradcam.{ext}") for fmt, ext in (("onnx", "onnx"), ("torchscript", "pt"))}
    start = time.perf_counter()
    to_onnx(explainer, paths["onnx"], example)
    to_torchscript(explainer, paths["torchscript"], example)
    plain_path = os.path.join(out, f"{name}.onnx")
    model_to_onnx(model, plain_path, example)
    print(f"\nexported in {time.perf_counter() - start:.1f} s: {paths['onnx']}, {paths['torchscript']} "
          f"(and the plain model, {plain_path})")
    eager = explainer(batch)
    runtimes = {}
    for fmt, path in paths.items():
        rt = load(path, spin=False)
        got = rt(batch)
        diff = float((got.cams - eager.cams).abs().max())
        print(f"  {rt.backend:<34} class {int(got.targets[0])}, max |cam - eager| = {diff:.1e}")
        runtimes[fmt] = rt
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    runtimes["plain"] = ort.InferenceSession(plain_path, options, providers=["CPUExecutionProvider"])
    return runtimes
