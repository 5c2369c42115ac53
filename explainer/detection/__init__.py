"""Explanations of object detectors (torchvision's): :meth:`explainer.Explainer.for_detector`."""

from explainer.detection.explainer import DetectionExplainer, DetectionExplanation, ExplainedDetection, combine_levels
from explainer.detection.parts import DetectorParts, is_detector
from explainer.detection.targets import DetectionTarget

__all__ = ["DetectionExplainer", "DetectionExplanation", "ExplainedDetection", "DetectionTarget", "DetectorParts",
           "is_detector", "combine_levels"]
