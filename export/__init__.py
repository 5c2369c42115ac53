"""Export the explanation (gradient included) to TorchScript and ONNX, and run exported files.

    from export import to_onnx, to_torchscript, load
    to_onnx(explainer, "gradcam.onnx", example_images)            # part="full"
    to_torchscript(explainer, "gradcam.pt", example_images, part="head")
    to_aoti(explainer, "gradcam.pt2", example_images)               # AOTInductor (C++ and Python)
    rt = load("gradcam.onnx", device="cuda")                       # ONNX Runtime or torch.jit
    result = rt(images, targets=None)                              # an explainer.Explanation
    compare(explainer, rt, images)                                 # max |cam - eager|, same classes
    to_torchscript(Explainer.for_detector(detector), "det.pt", images)  # detectors: TorchScript
    detections, cams = load_detector("det.pt")(images, labels, boxes)   # labels (N, B), boxes (N, B, 4)
    to_onnx(Explainer.for_detector(yolo), "yolo.onnx", images)         # YOLO: ONNX (any engine)
    per_box = load("yolo.onnx", runtime="openvino").explain_detections(images)
"""

from export.aoti import to_aoti
from export.compare import Comparison, compare
from export.detection_graph import DetectorGraphInfo, TorchScriptDetectionExplainer, load_detector
from export.detector_onnx import DetectorOnnxInfo, detector_to_onnx
from export.detector_runtime import OnnxDetectionRuntime
from export.onnx_graph import model_to_onnx, to_onnx
from export.parts import PARTS, GraphInfo
from export.runtime import AotiExplainer, GraphRuntime, OnnxRuntimeExplainer, TorchScriptExplainer, load
from export.torchscript import to_torchscript

__all__ = ["to_aoti", "AotiExplainer", "to_onnx", "model_to_onnx", "to_torchscript", "load", "compare", "Comparison", "PARTS", "GraphInfo",
           "GraphRuntime", "OnnxRuntimeExplainer", "TorchScriptExplainer", "load_detector", "DetectorGraphInfo",
           "TorchScriptDetectionExplainer", "DetectorOnnxInfo", "detector_to_onnx", "OnnxDetectionRuntime"]
