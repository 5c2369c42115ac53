"""Backbone and head of an ONNX graph as two ONNX Runtime sessions, for graphs that do not convert.

The graph is cut at the target tensor with :class:`onnx.utils.Extractor`: the backbone computes the
tensor and every other value the rest of the graph reads that does not depend on it (skips, e.g. a
``Shape`` of the input); the head computes the outputs from those. Gradient-free methods run on
them unchanged (Eigen-CAM reads the activations; Ablation-CAM and ReciproCAM re-run the head;
Score-CAM the whole graph), through :meth:`explainer.Explainer.from_parts`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import torch
from torch import Tensor

from explainer.errors import OnnxModelError
from explainer.onnx_import.convert import image_inputs
from explainer.onnx_import.graph_layers import GraphTensor


def split_graph(model: onnx.ModelProto, tensor: str) -> tuple[onnx.ModelProto, onnx.ModelProto, list[str]]:
    """``(backbone, head, skips)``: ``backbone(image) -> (tensor, *skips)``, ``head(tensor, *skips) -> outputs``."""
    graph = model.graph
    image = image_inputs(model)[0].name
    dependent = {tensor}
    for node in graph.node:  # nodes are topologically sorted
        if any(i in dependent for i in node.input):
            dependent.update(o for o in node.output if o)
    from_image = {image}
    for node in graph.node:
        if any(i in from_image for i in node.input):
            from_image.update(o for o in node.output if o)
    head_nodes = [n for n in graph.node if any(i in dependent for i in n.input)]
    produced = {o for n in head_nodes for o in n.output}
    skips = list(dict.fromkeys(i for n in head_nodes for i in n.input
                               if i and i not in dependent and i not in produced and i in from_image))
    outputs = [o.name for o in graph.output]
    if any(o not in dependent for o in outputs):
        raise OnnxModelError(f"the graph's outputs do not all depend on {tensor!r}; pick a later tensor")
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    extractor = onnx.utils.Extractor(inferred)
    backbone = extractor.extract_model([image], [tensor, *skips])
    head = extractor.extract_model([tensor, *skips], outputs)
    return backbone, head, skips


class OrtPart:
    """One ONNX Runtime session as a torch-in, torch-out callable (CPU tensors; float32)."""

    def __init__(self, model: onnx.ModelProto, providers: Sequence[str] | None = None,
                 nhwc_input: bool = False) -> None:
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(model.SerializeToString(),
                                                providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as exc:  # noqa: BLE001 - ORT's own exception types
            raise OnnxModelError(f"ONNX Runtime cannot run the split graph: {str(exc).strip()[:300]}") from exc
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.nhwc_input = nhwc_input

    def __call__(self, *tensors: Tensor) -> Tensor | tuple[Tensor, ...]:
        first = tensors[0].permute(0, 2, 3, 1) if self.nhwc_input else tensors[0]
        feed = {name: np.ascontiguousarray(t.detach().cpu().numpy())
                for name, t in zip(self.inputs, (first, *tensors[1:]))}
        out = [torch.from_numpy(o) for o in self.session.run(self.outputs, feed)]
        return out[0] if len(out) == 1 else tuple(out)


def onnxruntime_parts(model: onnx.ModelProto, tensor: GraphTensor, layout: str,
                      providers: Sequence[str] | None = None) -> tuple[OrtPart, OrtPart, OrtPart]:
    """``(backbone, head, whole model)`` sessions for ``model`` cut at ``tensor``."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise OnnxModelError("running ONNX graphs needs onnxruntime: pip install 'deploycam[onnx]'") from exc
    backbone, head, _ = split_graph(model, tensor.name)
    return (OrtPart(backbone, providers, layout == "nhwc"), OrtPart(head, providers),
            OrtPart(model, providers, layout == "nhwc"))
