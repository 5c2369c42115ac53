"""Models given as ONNX files: read, normalise, list their tensors, convert, explain.

``Explainer.from_onnx(path, target_layer=None, method="gradcam")`` is the entry point
(:mod:`explainer.onnx_import.explainer_onnx`); :func:`spatial_tensors` lists what can be explained.
"""

from explainer.onnx_import.convert import OnnxModule, read_model
from explainer.onnx_import.explainer_onnx import OnnxExplainer, from_onnx, gradient_free_methods
from explainer.onnx_import.graph_layers import GraphTensor, default_tensor, resolve, spatial_tensors
from explainer.onnx_import.normalise import normalise

__all__ = ["OnnxExplainer", "OnnxModule", "GraphTensor", "from_onnx", "gradient_free_methods", "read_model",
           "normalise", "spatial_tensors", "default_tensor", "resolve"]
