"""onnx2torch converters for what newer exporters write and onnx2torch 1.5 lacks, added through its registry.

torch 2.14's exporters and tf2onnx write opsets 17-23; onnx2torch 1.5 stops at about 17. Most
newer operator versions only admit new element types (bfloat16, float8, int4), so the existing
converter is exact for the float32 graphs deploycam explains: those are registered as aliases
(:data:`TYPE_ONLY_BUMPS`). Versions that changed behaviour get a converter written for them:

* ``Reduce*``-18/20 take ``axes`` as an input instead of an attribute: read as a constant.
* ``AveragePool``-19/22 (``dilations``), ``Pad``-18+ (``axes`` input, ``wrap`` mode), ``Resize``-18/19
  (``antialias``, ``axes``, aspect-ratio policies), ``ScatterND``-18 (reductions) and ``Split``-18
  (``num_outputs``) reuse the older converter when the new feature is unused, and raise
  ``NotImplementedError`` (reported as an unsupported operator) when it is used.
* ``Gelu``-20 (new in opset 20) becomes :class:`torch.nn.GELU`.

:func:`register` is idempotent and only adds entries that are missing (it never replaces one of
onnx2torch's own).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

_LOCK = threading.Lock()
_DONE = False

#: op -> (new versions, the registered version whose converter is exact for float32 graphs)
TYPE_ONLY_BUMPS: dict[str, tuple[tuple[int, ...], int]] = {
    **{op: ((22,), 7) for op in ("Acos", "Asin", "Atan", "Cos", "Sin", "Tan")},
    "Cast": ((19, 21, 23), 13),
    "ConstantOfShape": ((20, 21, 23), 9),
    "EyeLike": ((22,), 9),
    "GreaterOrEqual": ((16,), 12),
    "HardSwish": ((22,), 14),
    "IsInf": ((20,), 10),
    "IsNaN": ((20,), 13),
    "LessOrEqual": ((16,), 12),
    "RoiAlign": ((22,), 16),
    "Round": ((22,), 11),
    "Constant": ((19, 21, 23), 13),
    "Conv": ((22,), 11),
    "ConvTranspose": ((22,), 11),
    "Dropout": ((22,), 13),
    "Elu": ((22,), 6),
    "Equal": ((19,), 13),
    "Flatten": ((21, 23), 13),
    "GlobalAveragePool": ((22,), 1),
    "HardSigmoid": ((22,), 6),
    "Identity": ((19, 21, 23), 16),
    "InstanceNormalization": ((22,), 6),
    "MaxPool": ((22,), 12),
    "Reshape": ((19, 21, 23), 14),
    "Selu": ((22,), 6),
    "Shape": ((19, 21, 23), 15),
    "Softplus": ((22,), 1),
    "Softsign": ((22,), 1),
    "Squeeze": ((23,), 21),
    "Transpose": ((21, 23), 13),
    "Unsqueeze": ((21, 23), 13),
}

_REDUCE_18 = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
              "ReduceProd", "ReduceSumSquare")


def register() -> None:
    """Add deploycam's converters to onnx2torch's registry (once per process)."""
    global _DONE
    with _LOCK:
        if _DONE:
            return
        from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription

        def existing(op: str, version: int) -> Callable:
            return _CONVERTER_REGISTRY[OperationDescription("", op, version)]

        def add(op: str, version: int, converter: Callable) -> None:
            _CONVERTER_REGISTRY.setdefault(OperationDescription("", op, version), converter)

        for op, (versions, source) in TYPE_ONLY_BUMPS.items():
            for version in versions:
                add(op, version, existing(op, source))
        for op in _REDUCE_18:
            add(op, 18, _reduce_with_axes_input)
        for op in ("ReduceMax", "ReduceMin"):
            add(op, 20, _reduce_with_axes_input)
        add("AveragePool", 19, _unless(existing("AveragePool", 11), _dilated, "dilations other than 1"))
        add("AveragePool", 22, _unless(existing("AveragePool", 11), _dilated, "dilations other than 1"))
        for version in (18, 19, 21, 23):
            add("Pad", version, _unless(existing("Pad", 13), _pad_features, "an axes input or mode='wrap'"))
        add("Split", 18, _unless(existing("Split", 13), lambda node: False, ""))
        for version in (18, 19):
            add("Resize", version, _unless(existing("Resize", 13), _resize_features,
                                           "antialias, axes, keep_aspect_ratio_policy or half_pixel_symmetric"))
        add("ScatterND", 18, _unless(existing("ScatterND", 16), lambda node: node.attributes.get("reduction", "none")
                                      not in ("none", b"none"), "a reduction"))
        add("Gelu", 20, _gelu)
        _DONE = True


def _unless(converter: Callable, uses_new_feature: Callable, feature: str) -> Callable:
    """``converter``, refusing nodes for which ``uses_new_feature(node)`` is true."""
    def convert(node, graph):
        if uses_new_feature(node):
            raise NotImplementedError(f"{node.operation_type} with {feature} is not supported")
        return converter(node, graph)
    return convert


def _dilated(node) -> bool:
    return any(d != 1 for d in node.attributes.get("dilations", []))


def _pad_features(node) -> bool:
    return len(node.input_values) > 3 and bool(node.input_values[3]) or node.attributes.get("mode") == "wrap"


def _resize_features(node) -> bool:
    a = node.attributes

    def text(name: str, default: str) -> str:
        value = a.get(name, default)
        return value.decode() if isinstance(value, bytes) else str(value)

    return (bool(a.get("antialias", 0)) or "axes" in a or text("keep_aspect_ratio_policy", "stretch") != "stretch"
            or text("coordinate_transformation_mode", "half_pixel") == "half_pixel_symmetric")


def _gelu(node, graph):
    """``Gelu``-20: ``approximate="none"`` (erf) or ``"tanh"``, as :class:`torch.nn.GELU`."""
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node
    from torch import nn

    approximate = node.attributes.get("approximate", "none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else str(approximate)
    return OperationConverterResult(torch_module=nn.GELU(approximate=approximate),
                                    onnx_mapping=onnx_mapping_from_node(node))


def _reduce_with_axes_input(node, graph):
    """``Reduce*``-18: axes come from a constant second input (absent or empty: all axes, or none when
    ``noop_with_empty_axes``)."""
    from onnx2torch.node_converters.identity import OnnxCopyIdentity
    from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, get_const_value

    axes = None
    if len(node.input_values) > 1 and node.input_values[1]:
        try:
            axes = [int(a) for a in get_const_value(node.input_values[1], graph).reshape(-1).tolist()]
        except KeyError as exc:
            raise NotImplementedError(f"{node.operation_type} with axes computed at run time is not supported") from exc
    mapping = OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values)
    if not axes and node.attributes.get("noop_with_empty_axes", 0):
        return OperationConverterResult(torch_module=OnnxCopyIdentity(), onnx_mapping=mapping)
    module = OnnxReduceStaticAxes(operation_type=node.operation_type, axes=axes or None,
                                  keepdims=node.attributes.get("keepdims", 1))
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping)
