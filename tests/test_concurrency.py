"""explainer.tracing_lock: building explainers (an fx trace) while other threads explain.

torch.fx patches ``nn.Module.__call__`` process-wide while it traces; without the lock,
explanations running meanwhile failed and explainers built during the race came out wrong.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from explainer import Explainer, list_layers
from tests.helpers import calibrated_model

LAYERS = ("layer4", "layer3", "layer2", "layer4.1.conv2")


def test_tracing_while_explaining_in_other_threads_matches_sequential():
    resnet, mobilenet = calibrated_model("resnet18"), calibrated_model("mobilenet_v3_small")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    running = Explainer(resnet, "layer4", "gradcam")
    expected_running = running(x).cams
    expected_built = {layer: Explainer(resnet, layer, "gradcam")(x).cams for layer in LAYERS}
    expected_other = Explainer(mobilenet, "features", "layercam")(x).cams

    def explain_repeatedly(_: int) -> float:
        return max(float((running(x).cams - expected_running).abs().max()) for _ in range(6))

    def build_and_explain(i: int) -> float:
        layer = LAYERS[i % len(LAYERS)]
        if i % 3 == 2:
            return float((Explainer(mobilenet, "features", "layercam")(x).cams - expected_other).abs().max())
        list_layers(resnet, (1, 3, 64, 64))  # a trace of its own, on a copy
        return float((Explainer(resnet, layer, "gradcam")(x).cams - expected_built[layer]).abs().max())

    with ThreadPoolExecutor(max_workers=8) as pool:
        runs = [pool.submit(explain_repeatedly, i) for i in range(4)]
        builds = [pool.submit(build_and_explain, i) for i in range(12)]
        diffs = [f.result(timeout=600) for f in runs + builds]
    assert max(diffs) == 0.0


def test_train_eval_retrace_in_one_thread_while_others_explain():
    """The train/eval re-trace goes through the same lock (an eval explainer traced again for eval)."""
    model = calibrated_model("resnet18")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    shared = Explainer(model, "layer4", "gradcam++")
    expected = shared(x).cams
    failures: list[BaseException] = []
    stop = threading.Event()

    def explain() -> None:
        try:
            while not stop.is_set():
                assert float((shared(x).cams - expected).abs().max()) == 0.0
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=explain) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(4):
            fresh = Explainer(model, "layer3", "gradcam")
            fresh._splits.clear()  # force the traced-graph path a mode switch takes
            fresh(x)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=300)
    assert not failures, failures[0]
