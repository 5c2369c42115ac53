"""explainer.core: no hooks, no flags changed, no .grad, no shared state between explainers or threads."""

from __future__ import annotations

import threading

import torch
from torch import nn
from torch.nn.modules import module as module_globals

from explainer import Explainer
from explainer.methods import exportable_methods
from tests.helpers import random_input, seeded_model


def hook_count(model: nn.Module) -> int:
    per_module = sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
        for m in model.modules()
    )
    global_hooks = (
        len(module_globals._global_forward_hooks) + len(module_globals._global_forward_pre_hooks)
        + len(module_globals._global_backward_hooks) + len(module_globals._global_backward_pre_hooks)
    )
    return per_module + global_hooks


class Probe(nn.Module):
    """Sits in the head and records how many hooks exist while the explainer runs."""

    def __init__(self) -> None:
        super().__init__()
        self.root: list[nn.Module] = []
        self.seen: list[int] = []

    def forward(self, x):
        self.seen.append(hook_count(self.root[0]))
        return x


class ProbedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.probe = Probe()
        self.fc = nn.Linear(8, 4)
        self.probe.root.append(self)

    def forward(self, x):
        return self.fc(self.probe(torch.relu(self.features(x))).mean(dim=(2, 3)))


def snapshot(model: nn.Module):
    return (
        model.training,
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        {k: v.clone() for k, v in model.state_dict().items()},
    )


def test_no_hooks_before_during_or_after_and_model_untouched():
    torch.manual_seed(0)
    model = ProbedNet().eval()
    model.fc.weight.requires_grad_(False)  # a mixed requires_grad pattern must survive
    before = snapshot(model)
    assert hook_count(model) == 0
    exp = Explainer(model, "features")
    for method in exportable_methods():
        exp.with_method(method)(random_input(2, 12), [0, 3])
    assert model.probe.seen and set(model.probe.seen) == {0}
    assert hook_count(model) == 0
    after = snapshot(model)
    assert before[:3] == after[:3]
    assert all(torch.equal(before[3][k], after[3][k]) for k in before[3])
    assert all(p.grad is None for p in model.parameters())


def test_no_parameter_gradients_on_a_real_architecture():
    model = seeded_model("resnet18")
    Explainer(model, "layer3", "gradcam")(random_input(2, 64))
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_works_under_no_grad_and_leaves_grad_mode_alone():
    exp = Explainer(seeded_model("resnet18"), "layer4")
    x = random_input(1, 64)
    expected = exp(x).raw
    with torch.no_grad():
        got = exp(x).raw
        assert not torch.is_grad_enabled()
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert torch.is_grad_enabled()


def test_two_explainers_on_one_model_agree_with_one():
    model = seeded_model("resnet18")
    x = random_input(2, 64)
    alone = Explainer(model, "layer4", "gradcam")(x).raw
    first = Explainer(model, "layer4", "gradcam")
    second = Explainer(model, "layer3", "layercam")
    a = first(x).raw
    second(x)
    b = first(x).raw
    torch.testing.assert_close(a, alone, rtol=0, atol=0)
    torch.testing.assert_close(b, alone, rtol=0, atol=0)


def test_eight_threads_on_one_explainer_match_single_threaded():
    exp = Explainer(seeded_model("resnet18"), "layer4", "gradcam++")
    inputs = [random_input(2, 64, seed=s) for s in range(8)]
    expected = [exp(x, [s, s + 1]).cams for s, x in enumerate(inputs)]
    results: list = [None] * 8
    errors: list = []
    start = threading.Barrier(8)

    def work(i: int) -> None:
        try:
            start.wait()
            for _ in range(3):
                results[i] = exp(inputs[i], [i, i + 1]).cams
        except Exception as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for got, want in zip(results, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_inputs_and_targets_made_under_inference_mode_are_accepted():
    model = seeded_model("resnet18")
    exp = Explainer(model, "layer4")
    with torch.inference_mode():
        x = random_input(2, 64)
        targets = model(x).argmax(1)
    assert x.is_inference() and targets.is_inference()
    result = exp(x, targets)
    torch.testing.assert_close(result.raw, exp(x.clone(), targets.clone()).raw, rtol=0, atol=0)
