"""ONNX test models: checked-in files that never were PyTorch, torchvision models exported by both torch
exporters, small graphs made here for error cases, and float64 references independent of any conversion."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import tempfile
import warnings

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import calibrated_model

DATA = os.path.join(os.path.dirname(__file__), "data", "onnx")
#: checked-in Keras models (scripts/make_keras_onnx.py): file stem -> NHWC input size
KERAS = ("keras_small_cnn", "keras_mobilenet_v2")
TF_STYLE = os.path.join(DATA, "tf_style_opset13.onnx")
#: torchvision models exported here: (architecture, the layer whose output feeds the global pooling)
TORCHVISION = (("resnet18", "layer4"), ("mobilenet_v3_small", "features"))
#: the same, marked slow: SiLU and squeeze-excitation; LayerNorm and GELU (Gelu-20 from the dynamo exporter)
TORCHVISION_SLOW = (("efficientnet_b0", "features"), ("convnext_tiny", "features"))
EXPORTERS = ("dynamo", "legacy")


def keras_path(name: str) -> str:
    return os.path.join(DATA, f"{name}.onnx")


def keras_reference(name: str) -> dict[str, np.ndarray]:
    """x (N, H, W, C) float32, A and G (N, C, h, w) float64 from Keras's GradientTape, logits, target."""
    with np.load(os.path.join(DATA, f"{name}.npz")) as data:
        ref = {k: data[k] for k in data.files}
    ref["A"], ref["G"] = ref["A"].transpose(0, 3, 1, 2), ref["G"].transpose(0, 3, 1, 2)
    return ref


@functools.cache
def torchvision_onnx(arch: str, exporter: str) -> bytes:
    """``arch`` (calibrated seeded weights) exported at the exporter's default settings (batch 1 example)."""
    model = calibrated_model(arch)
    x = torch.randn(1, 3, 64, 64)
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        path = os.path.join(folder, "model.onnx")
        torch.onnx.export(model, (x,), path, dynamo=exporter == "dynamo")
        return onnx.load(path).SerializeToString()


# --- the hand-built TF-style graph, restated in float64 NumPy --------------------------------------------------

def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int, groups: int = 1) -> np.ndarray:
    """Plain float64 2-D convolution (stride 1), NCHW, weights (out, in/groups, k, k)."""
    n, c, h, wd = x.shape
    out_c, per_group, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    y = np.zeros((n, out_c, h + 2 * pad - k + 1, wd + 2 * pad - k + 1))
    step = out_c // groups
    for o in range(out_c):
        g = o // step
        for di in range(k):
            for dj in range(k):
                patch = xp[:, g * per_group:(g + 1) * per_group, di:di + y.shape[2], dj:dj + y.shape[3]]
                y[:, o] += np.einsum("nchw,c->nhw", patch, w[o, :, di, dj])
        y[:, o] += b[o]
    return y


def tf_style_reference(x_nhwc: np.ndarray, targets: list[int], layer: str):
    """``(A, G, logits)`` of the TF-style graph in float64: A at ``layer`` ("block_add" or "features")
    and G = d logit[target] / dA, by the chain rule written out."""
    weights = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in onnx.load(TF_STYLE).graph.initializer}
    x = x_nhwc.astype(np.float64).transpose(0, 3, 1, 2)
    stem = np.clip(_conv(x, weights["stem_w"], weights["stem_b"], 1), 0, 6)
    block = np.clip(_conv(stem, weights["group_w"], weights["group_b"], 1, groups=2), 0, 6) + stem
    proj = _conv(block, weights["proj_w"], weights["proj_b"], 0)
    features = np.clip(proj, 0, 6)
    hw = features.shape[2] * features.shape[3]
    logits = features.mean(axis=(2, 3)) @ weights["fc_w"].T + weights["fc_b"]
    d_features = weights["fc_w"][targets][:, :, None, None] / hw * np.ones_like(features)  # (N, 16, h, w)
    if layer == "features":
        return features, d_features, logits
    d_proj = d_features * ((proj > 0) & (proj < 6))
    d_block = np.einsum("nohw,oc->nchw", d_proj, weights["proj_w"][:, :, 0, 0])
    return block, d_block, logits


# --- small graphs for the error cases ---------------------------------------------------------------------------

def _graph(nodes, inputs, outputs, inits, opset: int = 17) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model.SerializeToString()


def _w(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.random.default_rng(1).standard_normal(shape).astype(np.float32), name)


def unconvertible_head() -> bytes:
    """Conv -> Relu "act" -> GlobalAveragePool -> Flatten -> Gemm -> LpNormalization (which onnx2torch lacks)."""
    return _graph(
        [helper.make_node("Conv", ["image", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["conv"], ["act"]),
         helper.make_node("GlobalAveragePool", ["act"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("Gemm", ["flat", "fc", "fc_b"], ["scores"], transB=1),
         helper.make_node("LpNormalization", ["scores"], ["out"], axis=1, p=2)],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 5])],
        [_w("w", 6, 3, 3, 3), _w("b", 6), _w("fc", 5, 6), _w("fc_b", 5)],
    )


def mlp() -> bytes:
    """A graph with no 4-D tensor: Flatten -> Gemm."""
    return _graph(
        [helper.make_node("Flatten", ["image"], ["flat"]), helper.make_node("Gemm", ["flat", "fc"], ["out"], transB=1)],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 5])],
        [_w("fc", 5, 48)],
    )


def two_inputs() -> bytes:
    return _graph(
        [helper.make_node("Add", ["a", "b"], ["out"])],
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3, 4, 4]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [],
    )
