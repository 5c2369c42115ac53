"""Arguments shared by the sub-commands, and checks that run before any work.

Nothing here imports torch: ``deploycam --help`` and argument errors stay fast. The
checks raise :class:`~explainer.errors.InputError` (exit code 2, nothing written).
"""

from __future__ import annotations

import argparse
import os
import tempfile

from explainer.colormaps import COLORMAPS
from explainer.defaults import DEFAULT_MODEL
from explainer.errors import InputError


def add_model_args(parser: argparse.ArgumentParser, with_method: bool = True) -> None:
    """--model, --weights, --layer, --reshape (and --method) options."""
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"model name (default {DEFAULT_MODEL}, real ImageNet weights; `deploycam models` lists all)")
    parser.add_argument("--weights", default=None,
                        help="state_dict file for the model (torchvision models are random without it)")
    parser.add_argument("--layer", default=None, help="target layer (default: the model's last conv block)")
    parser.add_argument("--reshape", default=None, choices=("tokens", "channels_last"),
                        help="lay a transformer layer's output out as a map: tokens (ViT, (N, tokens, C)) or "
                             "channels_last (Swin, (N, h, w, C)); default: the model's own (vit_*/swin_* known)")
    if with_method:
        parser.add_argument("--method", default="gradcam",
                            help="CAM method (default gradcam; `deploycam methods` lists them, aliases such as "
                                 "gradcampp are accepted)")


def add_cuda_graphs_arg(parser: argparse.ArgumentParser) -> None:
    """--cuda-graphs: record each batch shape once as a CUDA graph and replay it (with --device cuda)."""
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="with --device cuda: record each batch shape once as a CUDA graph and replay it (the "
                             "eager explainer's cuda_graphs=True; a --runtime .onnx file: ONNX Runtime's CUDA graphs)")


def check_cuda_graphs(args: argparse.Namespace, device: str) -> None:
    """InputError when --cuda-graphs is given without a CUDA device or for a runtime that has none."""
    if not getattr(args, "cuda_graphs", False):
        return
    if not device.startswith("cuda"):
        raise InputError("--cuda-graphs needs --device cuda (CUDA graphs exist on NVIDIA GPUs only)")
    runtime = getattr(args, "runtime", None)
    if runtime and (not runtime.endswith(".onnx") or getattr(args, "backend", "onnxruntime") != "onnxruntime"):
        raise InputError("--cuda-graphs applies to the eager explainer and to .onnx files run by ONNX Runtime; "
                         f"{runtime} with --backend {args.backend} has no CUDA graphs")


def add_onnx_args(parser: argparse.ArgumentParser, preprocessing: bool = True) -> None:
    """--onnx, --input-layout (and the preprocessing an ONNX file does not carry: --mean, --std, --scale, --bgr)."""
    parser.add_argument("--onnx", default=None, metavar="FILE",
                        help="explain a model given as an ONNX file (from PyTorch, TensorFlow/Keras, JAX...) "
                             "instead of --model; --layer is then a tensor or node name (`deploycam layers --onnx FILE`)")
    parser.add_argument("--input-layout", default="nchw", choices=("nchw", "nhwc"),
                        help="the ONNX model's image layout: nchw (PyTorch) or nhwc (TensorFlow/Keras)")
    if preprocessing:
        parser.add_argument("--mean", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                            help="per-channel mean subtracted after scaling (default ImageNet's 0.485 0.456 0.406)")
        parser.add_argument("--std", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                            help="per-channel divisor after the mean (default ImageNet's 0.229 0.224 0.225); "
                                 "Keras MobileNet style [-1, 1] inputs: --mean 0.5 0.5 0.5 --std 0.5 0.5 0.5")
        parser.add_argument("--scale", type=float, default=255.0,
                            help="pixels are divided by this first (default 255; 1 keeps 0..255)")
        parser.add_argument("--bgr", action="store_true", help="feed channels in BGR order (mean/std in that order)")


def preprocessing_kwargs(args: argparse.Namespace) -> dict:
    """The :class:`~explainer.imaging.Preprocess` options the arguments give (ImageNet's where none)."""
    options: dict = {"scale": getattr(args, "scale", 255.0), "bgr": getattr(args, "bgr", False)}
    if getattr(args, "mean", None) is not None:
        options["mean"] = tuple(args.mean)
    if getattr(args, "std", None) is not None:
        if any(s == 0 for s in args.std):
            raise InputError(f"--std values must be non-zero, got {args.std}")
        options["std"] = tuple(args.std)
    if not options["scale"] > 0:
        raise InputError(f"--scale must be positive, got {options['scale']}")
    return options


def check_onnx_file(args: argparse.Namespace) -> None:
    """--onnx names an existing file; --input-layout only goes with --onnx."""
    onnx_file = getattr(args, "onnx", None)
    if onnx_file is not None and not os.path.isfile(onnx_file):
        raise InputError(f"--onnx {onnx_file}: no such file")
    if onnx_file is None and getattr(args, "input_layout", "nchw") != "nchw":
        raise InputError("--input-layout is for --onnx models")


def add_picture_args(parser: argparse.ArgumentParser) -> None:
    """--resize, --colormap, --alpha options."""
    parser.add_argument("--resize", default="crop", choices=("crop", "squash"),
                        help="crop: short side 256 then centre 224 (torchvision); squash: whole image to 224")
    parser.add_argument("--colormap", default="jet", choices=sorted(COLORMAPS), metavar="NAME",
                        help="OpenCV colour map (jet, turbo, viridis, ...)")
    parser.add_argument("--alpha", type=float, default=0.5, help="heat-map weight in the overlay, 0..1")


def check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"--alpha must be between 0 and 1, got {alpha}")


def check_positive(name: str, value: int | None) -> None:
    """``--name`` must be None or at least 1."""
    if value is not None and value < 1:
        raise InputError(f"{name} must be at least 1, got {value}")


def check_output_dir(path: str) -> None:
    """``path`` is, or can become, a writable directory; raises InputError otherwise (creates nothing)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"--out {path} is a file, not a directory")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise InputError(f"--out {path}: {existing} is a file, so the directory cannot be created")
    if not _writable(existing):
        raise InputError(f"--out {path}: {existing} is not writable")


def check_output_file(path: str) -> None:
    """``path``'s folder is, or can become, writable and ``path`` is not a directory."""
    if os.path.isdir(path):
        raise InputError(f"--out {path} is a directory; give a file name")
    check_output_dir(os.path.dirname(os.path.abspath(path)))


def _writable(directory: str) -> bool:
    """True when a file can be created in ``directory`` (tried, since root passes every os.access check)."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def check_device(name: str) -> str:
    """``name`` as a torch device string that exists here (``cpu``, ``cuda``, ``cuda:1``); InputError otherwise."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"--device {name!r} is not a device name; use cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: torch sees no CUDA device here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise InputError(f"--device {name!r}: deploycam runs on cpu or cuda")
    return str(device)
