"""Same-math rewrites of an exported ONNX graph into patterns every engine computes correctly.

Measured with OpenCV 5.0's new DNN engine: ``HardSigmoid`` of a ``(N, C, 1, 1)`` tensor multiplied
by an ``(N, C, H, W)`` one (MobileNetV3's squeeze-excitation) comes out wrong (relative error ~1;
``HardSigmoid`` alone and ``Mul`` alone are right; it looks like a faulty fusion), so every
MobileNetV3 / EfficientNet-style graph got wrong logits and maps. ``HardSigmoid(x)`` is written as
``Clip(alpha * x + beta, 0, 1)`` instead: the same function, three plain ops that no engine fuses
that way. (The transposed-convolution pattern OpenVINO got wrong is avoided when the gradient is
traced: see :mod:`export.decompositions`.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx


def engine_safe(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite ``model`` in place (and return it): ``HardSigmoid`` -> ``Mul``, ``Add``, ``Clip``."""
    from onnx import helper, numpy_helper

    graph = model.graph
    nodes = []
    for index, node in enumerate(graph.node):
        if node.op_type != "HardSigmoid" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        alpha = next((a.f for a in node.attribute if a.name == "alpha"), 0.2)
        beta = next((a.f for a in node.attribute if a.name == "beta"), 0.5)
        base = f"{node.output[0]}__hardsigmoid{index}"
        for suffix, value in (("alpha", alpha), ("beta", beta), ("zero", 0.0), ("one", 1.0)):
            graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=np.float32), f"{base}_{suffix}"))
        nodes += [helper.make_node("Mul", [node.input[0], f"{base}_alpha"], [f"{base}_scaled"]),
                  helper.make_node("Add", [f"{base}_scaled", f"{base}_beta"], [f"{base}_shifted"]),
                  helper.make_node("Clip", [f"{base}_shifted", f"{base}_zero", f"{base}_one"], [node.output[0]])]
    del graph.node[:]
    graph.node.extend(nodes)
    return model
