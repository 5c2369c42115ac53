"""explainer.onnx_import.static_ops: the constant-argument modules against ONNX Runtime on the same graphs."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx2torch", reason="the onnx extra (onnx2torch) is not installed")
ort = pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
import torch  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from explainer.onnx_import.convert import to_torch  # noqa: E402
from explainer.onnx_import.normalise import normalise  # noqa: E402
from explainer.onnx_import.static_ops import StaticSlice  # noqa: E402

INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)
SLICES = [  # starts, ends, axes, steps on a (2, 5, 7) tensor
    ([1], [4], [1], [1]),
    ([0, 2], [INT64_MAX, -1], [1, 2], [2, 1]),
    ([-1], [INT64_MIN], [2], [-1]),  # reversed
    ([4], [0], [1], [-2]),
    ([-2], [-6], [2], [-3]),
    ([10], [-10], [2], [-1]),  # clamped
    ([3], [1], [1], [1]),      # empty
]


@pytest.mark.parametrize("starts,ends,axes,steps", SLICES)
def test_static_slice_matches_onnxruntime(starts, ends, axes, steps):
    inits = [numpy_helper.from_array(np.array(v, np.int64), n)
             for v, n in ((starts, "starts"), (ends, "ends"), (axes, "axes"), (steps, "steps"))]
    graph = helper.make_graph([helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["y"])], "s",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    x = np.arange(70, dtype=np.float32).reshape(2, 5, 7)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    converted = to_torch(normalise(onnx.load_model_from_string(model.SerializeToString())), "nchw")
    assert any(isinstance(m, StaticSlice) for m in converted.module.modules())
    np.testing.assert_array_equal(converted.module.onnx(torch.from_numpy(x)).numpy(), expected)
