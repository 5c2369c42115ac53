"""Make tests/data/onnx/tf_style_opset13.onnx: a hand-built opset-13 graph with the operators
TensorFlow exports use (needs only onnx and numpy). Run from the repository root:

    python scripts/make_tf_style_onnx.py

    image (N, 16, 16, 3) NHWC
      -> Transpose to NCHW -> Conv 3x3 (8) -> Clip(0, 6) "stem"          (ReLU6)
      -> Conv 3x3 groups=2 (8) -> Clip(0, 6) -> Add with "stem" "block_add"
      -> Conv 1x1 (16) -> Clip(0, 6) "features"
      -> GlobalAveragePool -> Flatten -> Gemm (10) "logits"

Weights are seeded random values (``numpy.random.default_rng(0)``).
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "onnx", "tf_style_opset13.onnx")


def build() -> onnx.ModelProto:
    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
        return numpy_helper.from_array((scale * rng.standard_normal(shape)).astype(np.float32), name)

    inits = [
        weight("stem_w", 8, 3, 3, 3), weight("stem_b", 8, scale=0.1),
        weight("group_w", 8, 4, 3, 3), weight("group_b", 8, scale=0.1),
        weight("proj_w", 16, 8, 1, 1), weight("proj_b", 16, scale=0.1),
        weight("fc_w", 10, 16), weight("fc_b", 10, scale=0.1),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(6.0, np.float32), "six"),
    ]
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], name="to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "stem_w", "stem_b"], ["stem_conv"], name="stem_conv", pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["stem_conv", "zero", "six"], ["stem"], name="stem_relu6"),
        helper.make_node("Conv", ["stem", "group_w", "group_b"], ["group_conv"], name="group_conv", pads=[1, 1, 1, 1],
                         group=2),
        helper.make_node("Clip", ["group_conv", "zero", "six"], ["group_relu6"], name="group_relu6"),
        helper.make_node("Add", ["group_relu6", "stem"], ["block_add"], name="block_add"),
        helper.make_node("Conv", ["block_add", "proj_w", "proj_b"], ["proj"], name="proj"),
        helper.make_node("Clip", ["proj", "zero", "six"], ["features"], name="features_relu6"),
        helper.make_node("GlobalAveragePool", ["features"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tf_style",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 16, 16, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="deploycam-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    onnx.save(build(), OUT)
    print("wrote", os.path.abspath(OUT))
