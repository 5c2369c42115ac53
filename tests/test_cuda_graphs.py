"""``Explainer(..., cuda_graphs=True)``: recorded calls give the eager explainer's answers.

On the CPU the recording is :func:`explainer.cuda_graphs.rerun_capture` (the same protocol as a CUDA
graph: static input buffers, outputs updated in place by each replay), which tests everything around
the graph: signatures, static buffers, targets in every form, deferred value checks, fallbacks and
threads. The CUDA tests at the end record real CUDA graphs; they skip without a GPU.
"""

from __future__ import annotations

import threading
import warnings

import pytest
import torch
from torch import nn

from explainer import Explainer
from explainer.cuda_graphs import GraphedCalls, rerun_capture
from explainer.errors import InputError, TargetError
from explainer.methods import METHODS, exportable_methods
from tests.helpers import calibrated_model, random_input

ARCHS = [("resnet18", "layer3"), ("mobilenet_v3_small", "features")]


def graphed(model: nn.Module, layer: str, method: str = "gradcam", **options) -> Explainer:
    """An explainer whose "graphs" are re-runs on the CPU."""
    exp = Explainer(model, layer, method, cuda_graphs=True, **options)
    exp._graphs = GraphedCalls(rerun_capture, "cpu")
    return exp


def same(a, b, tol: float = 1e-6) -> None:
    assert torch.equal(a.targets, b.targets)
    assert a.cams.shape == b.cams.shape and a.raw.shape == b.raw.shape
    assert float((a.cams - b.cams).abs().max()) <= tol
    assert float((a.raw - b.raw).abs().max()) <= tol
    assert torch.equal(a.logits, b.logits)


@pytest.mark.parametrize("arch,layer", ARCHS)
@pytest.mark.parametrize("method", exportable_methods(linear_head=True))
def test_recorded_calls_equal_eager(arch, layer, method):
    model = calibrated_model(arch)
    if METHODS[method].requires_linear_head:
        layer = {"resnet18": "layer4", "mobilenet_v3_small": "avgpool"}[arch]
        if arch == "mobilenet_v3_small":
            pytest.skip("mobilenet_v3_small's head is not pool + one linear layer")
    eager, recorded = Explainer(model, layer, method), graphed(model, layer, method)
    x, other = random_input(2, seed=1), random_input(2, seed=2)
    for targets in (None, 3, [1, 2], torch.tensor([[1, 2], [3, 4]])):
        same(eager(x, targets), recorded(x, targets))
    same(eager(other), recorded(other))  # a replay on new images
    same(eager(x, topk=2), recorded(x, topk=2))
    # recordings: None (both image sets), (N, 1) (the int and the list), (N, 2), topk
    assert len(recorded._graphs) == 4


def test_signatures_and_fallbacks():
    model = calibrated_model("resnet18")
    exp = graphed(model, "layer3")
    x = random_input(2)
    exp(x)
    exp(random_input(2, seed=3))
    assert len(exp._graphs) == 1  # same shape, same target form: one recording, replayed
    exp(random_input(3))
    exp(x, [1, 2])
    exp(x, torch.tensor([[1, 2], [0, 0]]))
    exp(x, topk=2)
    assert len(exp._graphs) == 5
    # these run eagerly (nothing recorded): eigen_smooth, target callables
    from explainer.targets import ClassTarget

    exp(x, eigen_smooth=True)
    exp(x, ClassTarget(1))
    assert len(exp._graphs) == 5
    # a perturbation method never records
    ablation = graphed(model, "layer4", "ablationcam", progress=False)
    ablation(x)
    assert len(ablation._graphs) == 0


def test_aug_smooth_replays_and_equals_eager():
    model = calibrated_model("resnet18")
    eager, recorded = Explainer(model, "layer3"), graphed(model, "layer3")
    x = random_input(2)
    same(eager(x, [1, 2], aug_smooth=True), recorded(x, [1, 2], aug_smooth=True))
    assert len(recorded._graphs) >= 1


def test_value_checks_are_read_after_each_replay():
    model = calibrated_model("resnet18")
    exp = graphed(model, "layer3")
    x = random_input(2)
    exp(x)  # recorded with finite images
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        exp(bad)
    same(Explainer(model, "layer3")(x), exp(x))  # the failure left the recording usable
    with pytest.raises(TargetError, match="out of range"):
        exp(x, [1, 1000])
    with pytest.raises(TargetError, match="2 targets for a batch of 3"):
        exp(random_input(3), [1, 2])


def test_moved_or_replaced_weights_record_again():
    model = calibrated_model("resnet18")
    exp = graphed(model, "layer3")
    x = random_input(2)
    first = exp(x)
    with torch.no_grad():  # in place: the same recording sees the new weights
        model.fc.weight.mul_(2.0)
    assert len(exp._graphs) == 1
    assert not torch.equal(exp(x).logits, first.logits)
    model.conv1.weight = nn.Parameter(model.conv1.weight.detach() * 1.5)  # a new first parameter: new address
    same(Explainer(model, "layer3")(x), exp(x))
    assert len(exp._graphs) == 2


def test_training_mode_runs_eagerly():
    model = calibrated_model("resnet18")
    exp = graphed(model, "layer3")
    model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exp(random_input(2))
    model.eval()
    assert len(exp._graphs) == 0


def test_a_failed_recording_warns_and_runs_eagerly():
    def refusing(fn):
        raise RuntimeError("operation not permitted when stream is capturing")

    model = calibrated_model("resnet18")
    exp = Explainer(model, "layer3", cuda_graphs=True)
    exp._graphs = GraphedCalls(refusing, "cpu")
    x = random_input(2)
    with pytest.warns(RuntimeWarning, match="could not record a CUDA graph.*run eagerly"):
        got = exp(x)
    same(Explainer(model, "layer3")(x), got)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per signature
        exp(x)


def test_threads_share_one_recording():
    model = calibrated_model("resnet18")
    exp = graphed(model, "layer3")
    inputs = [random_input(2, seed=s) for s in range(6)]
    want = [Explainer(model, "layer3")(x) for x in inputs]
    got: dict[int, object] = {}

    def work(i: int) -> None:
        for _ in range(3):
            got[i] = exp(inputs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, w in enumerate(want):
        same(w, got[i])


def test_options_are_checked_and_cpu_inputs_run_eagerly():
    model = calibrated_model("resnet18")
    with pytest.raises(ValueError, match="cuda_graphs must be True or False"):
        Explainer(model, "layer3", cuda_graphs="yes")
    exp = Explainer(model, "layer3", cuda_graphs=True)
    assert exp.cuda_graphs and not Explainer(model, "layer3").cuda_graphs
    same(Explainer(model, "layer3")(random_input(2)), exp(random_input(2)))  # CPU: no graphs, same answers
    assert len(exp._graphs) == 0
    other = exp.with_method("layercam")
    assert other.cuda_graphs and other._graphs is not exp._graphs


# -- real CUDA graphs -------------------------------------------------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def no_tf32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("arch,layer", ARCHS + [("efficientnet_b0", "features"), ("densenet121", "features")])
@pytest.mark.parametrize("method", exportable_methods())
def test_cuda_graphs_equal_eager_on_cuda(arch, layer, method, no_tf32):
    model = calibrated_model(arch).cuda()
    eager, recorded = Explainer(model, layer, method), Explainer(model, layer, method, cuda_graphs=True)
    for seed in (1, 2, 3):  # the first call records, the others replay
        x = random_input(2, seed=seed).cuda()
        for targets in (None, torch.tensor([1, 2], device="cuda"), [[1, 2], [3, 4]]):
            same(eager(x, targets), recorded(x, targets), tol=1e-5)
    assert len(recorded._graphs) == 3


@cuda
@pytest.mark.cuda
def test_cuda_graphs_value_checks_on_cuda(no_tf32):
    model = calibrated_model("resnet18").cuda()
    exp = Explainer(model, "layer3", cuda_graphs=True)
    x = random_input(2).cuda()
    exp(x)
    with pytest.raises(InputError, match="NaN"):
        exp(x * float("nan"))
    with pytest.raises(TargetError, match="target class 1000 is out of range"):
        exp(x, torch.tensor([1, 1000], device="cuda"))
    same(Explainer(model, "layer3")(x), exp(x), tol=1e-5)


@cuda
@pytest.mark.cuda
def test_cuda_graphs_fall_back_for_host_syncing_models(no_tf32):
    class Syncing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            a = self.conv(x)
            kept = (a.flatten(1) > 0).nonzero()  # a data-dependent size: a host read, not recordable
            return self.fc(a.mean((2, 3))) + 0 * kept.shape[0]

    model = Syncing().cuda().eval()
    exp = Explainer(model, "conv", cuda_graphs=True)
    x = random_input(2, size=16).cuda()
    with pytest.warns(RuntimeWarning, match="could not record"):
        got = exp(x)
    same(Explainer(model, "conv")(x), got, tol=1e-6)


def test_onnx_models_take_the_option_on_the_torch_route_only():
    from explainer.errors import MethodError
    from tests.onnx_models import torchvision_onnx

    data = torchvision_onnx("resnet18", "dynamo")
    assert Explainer.from_onnx(data, method="gradcam", cuda_graphs=True).cuda_graphs
    with pytest.raises(MethodError, match="cuda_graph=True"):
        Explainer.from_onnx(data, method="eigencam", route="onnxruntime", cuda_graphs=True)
