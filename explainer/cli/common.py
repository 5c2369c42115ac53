"""Arguments and steps shared by the sub-commands."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from explainer.core import Explainer
from explainer.explanation import Explanation
from explainer.imaging import IMAGE_SUFFIXES, Preprocess
from explainer.labels import label_of
from explainer.methods import METHODS
from explainer.models import DEFAULT_MODEL, LoadedModel, load_model
from explainer.overlay import COLORMAPS, make_grid, overlay, save_png


def add_model_args(parser: argparse.ArgumentParser, with_method: bool = True) -> None:
    """--model, --weights, --layer (and --method) options."""
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"model name (default {DEFAULT_MODEL}, real ImageNet weights; `deploycam models` lists all)")
    parser.add_argument("--weights", default=None,
                        help="state_dict file for the model (torchvision models are random without it)")
    parser.add_argument("--layer", default=None, help="target layer (default: the model's last conv block)")
    parser.add_argument("--reshape", default=None, choices=("tokens", "channels_last"),
                        help="lay a transformer layer's output out as a map: tokens (ViT, (N, tokens, C)) or "
                             "channels_last (Swin, (N, h, w, C)); default: the model's own (vit_*/swin_* known)")
    if with_method:
        parser.add_argument("--method", default="gradcam", choices=list(METHODS), help="CAM method (default gradcam)")


def add_picture_args(parser: argparse.ArgumentParser) -> None:
    """--resize, --colormap, --alpha options."""
    parser.add_argument("--resize", default="crop", choices=("crop", "squash"),
                        help="crop: short side 256 then centre 224 (torchvision); squash: whole image to 224")
    parser.add_argument("--colormap", default="jet", choices=sorted(COLORMAPS), metavar="NAME",
                        help="OpenCV colour map (jet, turbo, viridis, ...)")
    parser.add_argument("--alpha", type=float, default=0.5, help="heat-map weight in the overlay, 0..1")


def model_from_args(args: argparse.Namespace, quiet: bool = False) -> LoadedModel:
    """Load the model the arguments name; warn on stderr when its weights are random."""
    loaded = load_model(args.model, args.weights)
    if not loaded.pretrained and not quiet:
        print(f"note: {loaded.name} has random weights (nothing is downloaded); "
              "pass --weights PATH to a saved state_dict for real predictions", file=sys.stderr)
    return loaded


def iter_image_paths(paths: Sequence[str]) -> Iterator[str]:
    """Each file given, and the image files (by suffix) directly inside each directory given, sorted."""
    for path in paths:
        if os.path.isdir(path):
            for name in sorted(os.listdir(path)):
                if name.lower().endswith(IMAGE_SUFFIXES):
                    yield os.path.join(path, name)
        else:
            yield path


@dataclass(frozen=True)
class ImageResult:
    """What was found for one image: the top classes and the PNGs written."""

    name: str
    classes: list[tuple[int, str, float]]  # (class id, label, probability), best first among the targets
    files: list[str]


def explain_batch(
    explainer: Explainer | Callable[..., Explanation],
    names: Sequence[str],
    images: Sequence[np.ndarray],
    preprocess: Preprocess,
    out_dir: str,
    classes: Sequence[int] | None = None,
    topk: int = 1,
    colormap: str = "jet",
    alpha: float = 0.5,
    device: str = "cpu",
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
) -> list[ImageResult]:
    """Explain a batch of RGB images, write one overlay PNG per image and class (+ a grid when several).

    ``explainer`` is an :class:`Explainer` or a runtime from :func:`export.load` (same call).
    Returns one :class:`ImageResult` per image.
    """
    tensors, views = zip(*(preprocess(image) for image in images))
    x = torch.stack(tensors).to(device)
    smooth = {"aug_smooth": aug_smooth, "eigen_smooth": eigen_smooth} if aug_smooth or eigen_smooth else {}
    if classes:
        result = explainer(x, torch.tensor([list(classes)] * len(images)), **smooth)
    else:
        result = explainer(x, topk=topk, **smooth)
    probs = result.probabilities.cpu()
    targets = result.targets.cpu().reshape(len(images), -1)
    cams = result.cams.cpu().reshape(len(images), targets.shape[1], *result.cams.shape[-2:])
    num_classes = probs.shape[1]
    out = []
    for i, (name, view) in enumerate(zip(names, views)):
        stem = os.path.splitext(os.path.basename(name))[0]
        found, files, titles = [], [], []
        for k, cls in enumerate(targets[i].tolist()):
            label, p = label_of(cls, num_classes), float(probs[i, cls])
            found.append((cls, label, p))
            path = os.path.join(out_dir, f"{stem}_{cls}_{result.method}.png")
            save_png(path, overlay(view, cams[i, k], colormap, alpha))
            files.append(path)
            titles.append(f"{cls} {label} {p:.2f}")
        if len(found) > 1:
            path = os.path.join(out_dir, f"{stem}_grid_{result.method}.png")
            save_png(path, make_grid(view, list(cams[i]), titles, colormap, alpha))
            files.append(path)
        out.append(ImageResult(name, found, files))
    return out


def format_classes(classes: Sequence[tuple[int, str, float]]) -> str:
    """``"285 Egyptian cat 0.78, 282 tiger cat 0.10"``."""
    return ", ".join(f"{c} {label} {p:.2f}" for c, label, p in classes)
