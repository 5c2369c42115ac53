"""``deploycam demo``: the bundled real model on the bundled real photos, end to end."""

from __future__ import annotations

import argparse
import functools
import os
import time

from deploycam.cli.args import add_picture_args, check_alpha, check_output_dir, check_positive

CAT, ESPRESSO = 285, 967


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="explain the bundled photos with the bundled EfficientNet-Lite0, time it")
    p.add_argument("--out", default="deploycam-demo", help="directory for the PNGs (default ./deploycam-demo)")
    p.add_argument("--repeat", type=int, default=15,
                   help="timed rounds per latency row, each alternating with plain inference (medians reported)")
    p.add_argument("--no-export", action="store_true", help="skip the ONNX/TorchScript export and their timings")
    add_picture_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """The bundled model on the bundled photos: PNGs, export check, latency table. Exit 0, or 2 for bad arguments."""
    check_positive("--repeat", args.repeat)
    check_alpha(args.alpha)
    check_output_dir(args.out)
    t0 = time.perf_counter()

    import numpy as np
    import torch

    from deploycam.cli.common import explain_batch, format_classes
    from explainer.core import Explainer
    from explainer.imaging import Preprocess, sample_images
    from explainer.labels import label_of
    from explainer.methods import METHODS, per_frame_methods
    from explainer.models import load_model
    from explainer.overlay import make_grid, save_png
    from explainer.timing import NOISY_SPREAD, paired_ms

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
    for k, title in enumerate(titles):
        left, right = both.cams[0, k, :, :half].mean().item(), both.cams[0, k, :, half:].mean().item()
        print(f"  side by side: map for {title!r} mean left (cat) {left:.2f} / right (coffee) {right:.2f}")
    print(f"wrote {sum(len(r.files) for r in results) + 1} PNGs to {os.path.abspath(args.out)}")

    # 3. Export the explanation (gradient inside) and check it against eager on the photos.
    batch = torch.stack([preprocess(photos["chelsea"])[0]])
    runtimes = {} if args.no_export else _export(explainer, model, loaded.name, batch, args.out)

    # 4. Latency: each method against a plain inference_mode forward, timed in alternating rounds.
    print(f"\nlatency, {loaded.name} @ {loaded.layer}, batch 1, 224x224, CPU, {torch.get_num_threads()} threads "
          f"(medians of {args.repeat} rounds, each case alternating with its runtime's plain inference; "
          "ratio = case / that paired plain median):")

    def plain() -> None:
        with torch.inference_mode():
            model(batch)

    rows = []
    for name in per_frame_methods():  # not cam (needs a pooling + linear head) nor scorecam (seconds per image)
        method = explainer.with_method(name)
        slow = not METHODS[name].exportable
        rows.append((f"eager {name}", paired_ms(functools.partial(method, batch), plain,
                                                max(2, args.repeat // 5) if slow else args.repeat,
                                                warmup=1 if slow else 2)))
    if runtimes:
        plain_ort, ort_cam, ts_cam = runtimes["plain"], runtimes["onnx"], runtimes["torchscript"]
        feed = {"input": batch.numpy()}
        rows.append(("onnxruntime gradcam (full graph)",
                     paired_ms(lambda: ort_cam(batch), lambda: plain_ort.run(None, feed), args.repeat)))
        rows.append(("torchscript gradcam (full graph)", paired_ms(lambda: ts_cam(batch), plain, args.repeat)))
    print(f"  {'case':<34} {'ms':>8} {'plain ms':>9}  ratio")
    for label, timing in rows:
        print(f"  {label:<34} {timing.case_ms:8.2f} {timing.floor_ms:9.2f}  {timing.ratio:.2f}x"
              + ("  ! busy" if timing.noisy else ""))
    noisy = sum(timing.noisy for _, timing in rows)
    if noisy:
        print(f"  ! {noisy} row(s): plain inference varied by more than {NOISY_SPREAD:.0%} between rounds: the machine "
              "is busy and those ratios are unreliable; rerun `deploycam demo --no-export` on a quiet machine")
    print(f"\ndemo done in {time.perf_counter() - t0:.1f} s")
    return 0


def _export(explainer, model, name: str, batch, out: str) -> dict:
    """Write the gradcam graph as ONNX and TorchScript plus the plain model as ONNX; check them.

    ``explainer``: the gradcam :class:`~explainer.core.Explainer`; ``batch``: ``(1, 3, 224, 224)``.
    """
    import onnxruntime as ort

    from export import compare, load, model_to_onnx, to_onnx, to_torchscript
    from export.runtime import session_options

    example = batch.expand(2, -1, -1, -1).contiguous()
    paths = {fmt: os.path.join(out, f"{name}_gradcam.{ext}") for fmt, ext in (("onnx", "onnx"), ("torchscript", "pt"))}
    start = time.perf_counter()
    to_onnx(explainer, paths["onnx"], example)
    to_torchscript(explainer, paths["torchscript"], example)
    plain_path = os.path.join(out, f"{name}.onnx")
    model_to_onnx(model, plain_path, example)
    print(f"\nexported in {time.perf_counter() - start:.1f} s: {paths['onnx']}, {paths['torchscript']} "
          f"(and the plain model, {plain_path})")
    runtimes = {}
    for fmt, path in paths.items():
        rt = load(path, spin=False)
        check = compare(explainer, rt, batch)
        print(f"  {rt.backend:<34} same class as eager: {check.same_classes}, max |cam - eager| = {check.max_diff:.1e}")
        runtimes[fmt] = rt
    runtimes["plain"] = ort.InferenceSession(plain_path, session_options(spin=False), providers=["CPUExecutionProvider"])
    return runtimes
