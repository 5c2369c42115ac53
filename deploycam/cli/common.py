"""Steps shared by the sub-commands (imported by their ``run`` functions: this module loads torch)."""

from __future__ import annotations

import argparse
import glob
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from explainer.core import Explainer
from explainer.errors import InputError
from explainer.explanation import Explanation
from explainer.imaging import IMAGE_SUFFIXES, Preprocess
from explainer.labels import label_of
from explainer.models import LoadedModel, load_model
from explainer.overlay import make_grid, overlay, save_png


def model_from_args(args: argparse.Namespace, quiet: bool = False) -> LoadedModel:
    """Load the model the arguments name; warn on stderr when its weights are random."""
    loaded = load_model(args.model, args.weights)
    if not loaded.pretrained and not quiet:
        print(f"note: {loaded.name} has random weights (nothing is downloaded); "
              "pass --weights PATH to a saved state_dict for real predictions", file=sys.stderr)
    return loaded


def onnx_explainer_from_args(args: argparse.Namespace, method: str, device: str = "cpu") -> tuple[Explainer, int]:
    """``(explainer, image size)`` for ``--onnx FILE``: the size is the file's own fixed input size,
    else ``--size`` (224 by default)."""
    exp = Explainer.from_onnx(args.onnx, args.layer, method, input_layout=args.input_layout,
                              reshape=getattr(args, "reshape", None), cuda_graphs=getattr(args, "cuda_graphs", False))
    size = getattr(args, "size", None)
    fixed = getattr(exp, "image_size", None)
    if fixed is not None:
        if fixed[0] != fixed[1]:
            raise InputError(f"{args.onnx} takes {fixed[0]}x{fixed[1]} images; the command line feeds square ones")
        if size is not None and size != fixed[0]:
            raise InputError(f"{args.onnx} takes {fixed[0]}x{fixed[1]} images; --size {size} does not fit")
        size = fixed[0]
    if device != "cpu" and getattr(exp, "route", "") == "torch":
        exp.model.to(device)  # type: ignore[attr-defined]
    return exp, size or 224


def preprocess_for(args: argparse.Namespace, size: int = 224) -> Preprocess:
    """The preprocessing the arguments ask for, at ``size`` (short side ``size * 256 / 224`` for crop)."""
    from deploycam.cli.args import preprocessing_kwargs

    return Preprocess(crop_size=size, resize_size=round(size * 256 / 224), resize=getattr(args, "resize", "crop"),
                      **preprocessing_kwargs(args))


def iter_image_paths(paths: Sequence[str]) -> Iterator[str]:
    """Each file given, and the image files (by suffix) directly inside each directory given, sorted;
    a file reached twice (given twice, or also inside a directory given) comes once."""
    seen: set[str] = set()
    for path in paths:
        found = ([os.path.join(path, name) for name in sorted(os.listdir(path)) if name.lower().endswith(IMAGE_SUFFIXES)]
                 if os.path.isdir(path) else [path])
        for file in found:
            key = os.path.realpath(file)
            if key not in seen:
                seen.add(key)
                yield file


def output_stems(paths: Sequence[str]) -> dict[str, str]:
    """A distinct output stem per input path, so outputs never overwrite each other.

    The file's name without suffix (``cat``); inputs that share one get their path relative to
    the folder they share (``sub/cat``), then their suffix where that still clashes
    (``cat-png``, ``cat-jpg``), then a number.
    """
    def split(names: dict[str, str], rename) -> dict[str, str]:
        counts = Counter(names.values())
        return {p: rename(p, stem) if counts[stem] > 1 else stem for p, stem in names.items()}

    absolute = {p: os.path.abspath(p) for p in paths}
    stems = {p: os.path.splitext(os.path.basename(a))[0] for p, a in absolute.items()}
    clashing = [p for p, stem in stems.items() if Counter(stems.values())[stem] > 1]
    root = os.path.commonpath([os.path.dirname(absolute[p]) for p in clashing]) if clashing else ""
    stems = split(stems, lambda p, stem: os.path.splitext(os.path.relpath(absolute[p], root))[0])
    stems = split(stems, lambda p, stem: f"{stem}-{os.path.splitext(p)[1].lstrip('.').lower() or 'noext'}")
    result: dict[str, str] = {}
    for path, stem in stems.items():
        unique, n = stem, 2
        while unique in result.values():
            unique, n = f"{stem}-{n}", n + 1
        result[path] = unique
    return result


def existing_outputs(out_dir: str, stems: Iterable[str], method: str) -> list[str]:
    """Files in ``out_dir`` that explaining ``stems`` with ``method`` would write over."""
    found = []
    for stem in stems:
        pattern = os.path.join(glob.escape(out_dir), f"{glob.escape(stem)}_*_{glob.escape(method)}.png")
        found += sorted(glob.glob(pattern))
    return found


@dataclass(frozen=True)
class ImageResult:
    """What was found for one image: the top classes and the PNGs written (paths on disk)."""

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
    stems: Sequence[str] | None = None,
) -> list[ImageResult]:
    """Explain a batch of RGB images, write one overlay PNG per image and class (+ a grid when several).

    ``explainer`` is an :class:`Explainer` or a runtime from :func:`export.load` (same call).
    Files are ``{stem}_{class}_{method}.png`` under ``out_dir`` (``stems`` default to the names'
    base names; a stem with folders writes into sub-folders). Returns one :class:`ImageResult` per image.
    """
    tensors, views = zip(*(preprocess(image) for image in images))
    x = torch.stack(tensors).to(device)
    if getattr(explainer, "input_layout", "nchw") == "nhwc":  # an ONNX model (or its graph) taking (N, H, W, C)
        x = x.permute(0, 2, 3, 1).contiguous()
    smooth = {"aug_smooth": aug_smooth, "eigen_smooth": eigen_smooth} if aug_smooth or eigen_smooth else {}
    if classes:
        result = explainer(x, torch.tensor([list(classes)] * len(images)), **smooth)
    else:
        result = explainer(x, topk=topk, **smooth)
    probs = result.probabilities.cpu()
    targets = result.targets.cpu().reshape(len(images), -1)
    cams = result.cams.cpu().reshape(len(images), targets.shape[1], *result.cams.shape[-2:])
    num_classes = probs.shape[1]
    stems = list(stems) if stems is not None else [os.path.splitext(os.path.basename(n))[0] for n in names]
    out = []
    for i, (name, stem, view) in enumerate(zip(names, stems, views)):
        base = os.path.join(out_dir, stem)
        os.makedirs(os.path.dirname(base), exist_ok=True)
        found, files, titles = [], [], []
        for k, cls in enumerate(targets[i].tolist()):
            label, p = label_of(cls, num_classes), float(probs[i, cls])
            found.append((cls, label, p))
            path = f"{base}_{cls}_{result.method}.png"
            save_png(path, overlay(view, cams[i, k], colormap, alpha))
            files.append(path)
            titles.append(f"{cls} {label} {p:.2f}")
        if len(found) > 1:
            path = f"{base}_grid_{result.method}.png"
            save_png(path, make_grid(view, list(cams[i]), titles, colormap, alpha))
            files.append(path)
        out.append(ImageResult(name, found, files))
    return out


def format_classes(classes: Sequence[tuple[int, str, float]]) -> str:
    """``"285 Egyptian cat 0.78, 282 tiger cat 0.10"``."""
    return ", ".join(f"{c} {label} {p:.2f}" for c, label, p in classes)


def describe(explain: Any, source: str | None = None) -> str:
    """What explains, for a closing line: ``gradcam at layer4 of resnet50`` (an explainer; ``source``: the
    model's name) or ``gradcam at layer4, onnxruntime/CPUExecutionProvider`` (an exported graph's runtime)."""
    info = getattr(explain, "info", None)
    if info is not None:
        return f"{info.method} at {info.layer}, {explain.backend}"
    return f"{explain.method.name} at {explain.layer}" + (f" of {source}" if source else "")


@dataclass(frozen=True)
class ExplainerSpec:
    """The explainer the arguments describe, buildable anywhere (picklable: Ray actors call it)."""

    model: str
    weights: str | None
    layer: str | None
    method: str
    reshape: str | None
    onnx: str | None
    input_layout: str
    runtime: str | None
    backend: str
    device: str
    size: int | None
    cuda_graphs: bool = False

    def __call__(self) -> Any:
        return self.build_sized()[0]

    @classmethod
    def from_args(cls, args: argparse.Namespace, device: str) -> ExplainerSpec:
        """The spec of ``--model/--weights/--layer/--method/--reshape``, ``--onnx``, ``--runtime/--backend``."""
        return cls(args.model, args.weights, args.layer, args.method, args.reshape, args.onnx, args.input_layout,
                   args.runtime, args.backend, device, args.size, getattr(args, "cuda_graphs", False))

    def build_sized(self) -> tuple[Any, int]:
        """``(explainer or runtime, input size)``."""
        if self.runtime:
            from export import load

            runtime = load(self.runtime, device=self.device, runtime=self.backend, cuda_graph=self.cuda_graphs)
            return runtime, runtime.info.image_size[0]
        if self.onnx:
            return onnx_explainer_from_args(argparse.Namespace(**asdict(self)), self.method, self.device)
        loaded = model_from_args(argparse.Namespace(model=self.model, weights=self.weights))
        explainer = Explainer(loaded.model.to(self.device), self.layer or loaded.layer, self.method,
                              reshape=self.reshape or loaded.reshape, cuda_graphs=self.cuda_graphs)
        return explainer, self.size or 224
