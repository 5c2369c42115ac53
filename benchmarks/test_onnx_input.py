"""An ONNX file explained through Explainer.from_onnx against the PyTorch model it came from.

    pytest benchmarks/test_onnx_input.py --benchmark-only -s

EfficientNet-Lite0 (real weights) is exported by each torch exporter at its defaults; for each file
the same session times, in alternating rounds (explainer.timing.paired_ms), the original model's
plain inference (the floor), the converted graph's plain inference, and Grad-CAM on the converted
graph and on the original. Ratios are to the floor; ``! busy`` marks a floor spread over 25%.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import pytest
import torch

pytest.importorskip("onnx2torch", reason="the onnx extra (onnx2torch) is not installed")


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_onnx_converted_lite0(benchmark, exporter, tmp_path):
    from explainer import Explainer
    from explainer.imaging import Preprocess, sample_images
    from explainer.models import load_model
    from explainer.timing import NOISY_SPREAD, paired_ms

    loaded = load_model("efficientnet-lite0")
    x = Preprocess()(sample_images()["chelsea"])[0][None]
    path = tmp_path / "lite0.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(loaded.model, (x,), str(path), dynamo=exporter == "dynamo")
    converted = Explainer.from_onnx(path)
    original = Explainer(loaded.model, "_swish_1")  # the layer feeding the pooling, as the ONNX default

    def plain():
        with torch.no_grad():
            return loaded.model(x)

    def plain_converted():
        with torch.no_grad():
            return converted.model(x)

    rows = {"converted plain": paired_ms(plain_converted, plain, rounds=20),
            "gradcam, converted": paired_ms(lambda: converted(x), plain, rounds=20),
            "gradcam, original": paired_ms(lambda: original(x), plain, rounds=20)}
    benchmark.group = f"onnx input lite0 ({exporter})"
    benchmark.pedantic(lambda: converted(x), rounds=10, warmup_rounds=2, iterations=1)
    print(f"\nEfficientNet-Lite0 via the {exporter} exporter, batch 1, {torch.get_num_threads()} threads:")
    for name, p in rows.items():
        busy = "  ! busy" if p.floor_spread > NOISY_SPREAD else ""
        print(f"  {name:<20} {p.case_ms:6.1f} ms  {p.case_ms / p.floor_ms:4.2f}x of plain PyTorch "
              f"({p.floor_ms:.1f} ms){busy}")
        benchmark.extra_info[name] = p.case_ms / p.floor_ms
