"""Benchmark cases and the callables that run them."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import fx, nn

from explainer.core import Explainer
from explainer.errors import ExportError
from explainer.methods import exportable_methods
from explainer.models import load_model

#: model name -> target layer ("its last conv block"), 224 x 224 inputs.
MODELS: dict[str, str] = {
    "resnet50": "layer4",
    "mobilenet_v3_large": "features",
    "vgg16": "features",
    "efficientnet-lite0": "_conv_head",
}
#: every one-graph method of the registry (a new method file is benchmarked without another edit)
EAGER_METHODS = exportable_methods()
PEERS = {
    "pytorch-grad-cam": ("gradcam", "gradcam++", "layercam", "eigencam"),
    "torchcam": ("gradcam",),
    "captum": ("gradcam",),
}
#: runtimes that are deploycam itself, each compared with its own plain inference (peers and
#: eager-graphs: with eager's, the inference users run today).
OWN_RUNTIMES = ("eager", "torchscript", "onnxruntime", "aoti", "openvino", "opencv", "onnxruntime-graphs")
#: the exported runtimes (plain and Grad-CAM cases each); AOTInductor compiles for about a minute per file
EXPORTED_RUNTIMES = ("torchscript", "onnxruntime", "aoti", "openvino", "opencv")
#: runtimes that exist on a GPU only: the eager explainer with cuda_graphs=True (Grad-CAM, against eager
#: inference) and ONNX Runtime's CUDA graphs (plain and Grad-CAM, IO-bound CUDA tensors)
CUDA_RUNTIMES = ("eager-graphs", "onnxruntime-graphs")
IMAGE_SIZE = 224


class Unavailable(Exception):
    """This case cannot run here (a peer library or ONNX Runtime's CUDA provider is missing)."""


@dataclass(frozen=True)
class Case:
    """One thing to time. ``method == "plain"`` is the floor: inference without explanation."""

    model: str
    batch: int
    device: str
    runtime: str
    method: str

    @property
    def name(self) -> str:
        return f"{self.model}/b{self.batch}/{self.device}/{self.runtime}/{self.method}"

    @property
    def floor(self) -> Case:
        """The plain inference this case is compared with: the same runtime's (peers: eager's)."""
        runtime = self.runtime if self.runtime in OWN_RUNTIMES else "eager"
        return Case(self.model, self.batch, self.device, runtime, "plain")

    def to_dict(self) -> dict:
        return asdict(self)


def all_cases(models: Iterable[str] = MODELS, batches: Iterable[int] = (1, 8), devices: Iterable[str] = ("cpu",),
              peers: bool = True, runtimes: Iterable[str] = EXPORTED_RUNTIMES) -> list[Case]:
    """Every case of the matrix, floors first within each (model, batch, device); ``runtimes``: the
    exported runtimes to include (eager always is)."""
    out = []
    runtimes = [rt for rt in EXPORTED_RUNTIMES + CUDA_RUNTIMES if rt in set(runtimes)]
    for model in models:
        for batch in batches:
            for device in devices:
                here = [rt for rt in runtimes if rt not in CUDA_RUNTIMES or device.startswith("cuda")]
                out += [Case(model, batch, device, "eager", m) for m in ("plain", *EAGER_METHODS)]
                out += [Case(model, batch, device, rt, m) for rt in here for m in ("plain", "gradcam")
                        if not (rt == "eager-graphs" and m == "plain")]
                if peers:
                    out += [Case(model, batch, device, peer, m) for peer, methods in PEERS.items() for m in methods]
    return out


def _sync(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


class Workbench:
    """Builds and caches what the cases need; ``callable(case)`` returns the function to time.

    Exported files go to ``workdir`` (reused across processes, so memory subprocesses do not
    export again). Inputs are seeded; every runtime gets the same images and target classes
    (each image's top class under the eager model).
    """

    def __init__(self, workdir: str, seed: int = 0) -> None:
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.seed = seed
        self._models: dict[tuple[str, str], nn.Module] = {}
        self._cache: dict[tuple, Any] = {}

    def model(self, name: str, device: str) -> nn.Module:
        key = (name, device)
        if key not in self._models:
            self._models[key] = load_model(name, seed=self.seed).model.to(device)
        return self._models[key]

    def inputs(self, case: Case) -> tuple[torch.Tensor, torch.Tensor]:
        key = ("inputs", case.model, case.batch, case.device)
        if key not in self._cache:
            gen = torch.Generator().manual_seed(self.seed)
            x = torch.randn(case.batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen).to(case.device)
            model = self.model(case.model, case.device)  # built outside inference_mode
            with torch.no_grad():
                targets = model(x).argmax(1)
            self._cache[key] = (x, targets.clone())
        return self._cache[key]

    def _path(self, case: Case, what: str) -> str:
        return os.path.join(self.workdir, f"{case.model}_{what}_{case.device.replace(':', '')}")

    def callable(self, case: Case) -> Callable[[], object]:
        """The zero-argument function that runs ``case`` once (CUDA work synchronised)."""
        x, targets = self.inputs(case)
        model = self.model(case.model, case.device)
        layer = MODELS[case.model]
        sync = _sync(case.device)
        builder = getattr(self, "_" + case.runtime.replace("-", "_"))
        fn = builder(case, model, layer, x, targets)

        def run() -> None:
            fn()
            sync()

        return run

    # -- runtimes ---------------------------------------------------------------------------
    def _eager(self, case, model, layer, x, targets):
        if case.method == "plain":
            def plain():
                with torch.inference_mode():
                    return model(x)
            return plain
        explainer = Explainer(model, layer, case.method)
        return lambda: explainer(x, targets)

    def _eager_graphs(self, case, model, layer, x, targets):
        if not case.device.startswith("cuda"):
            raise Unavailable("CUDA graphs need a CUDA device")
        explainer = Explainer(model, layer, case.method, cuda_graphs=True)
        return lambda: explainer(x, targets)

    def _torchscript(self, case, model, layer, x, targets):
        from export.torchscript import script_module

        if case.method == "plain":
            key = ("ts-plain", case.model, case.device)
            if key not in self._cache:
                self._cache[key] = script_module(fx.symbolic_trace(model))
            scripted = self._cache[key]

            def plain():
                with torch.inference_mode():
                    return scripted(x)
            return plain
        from export import to_torchscript

        path = self._path(case, f"{case.method}.pt")
        if not os.path.exists(path):
            to_torchscript(Explainer(model, layer, case.method), path, x[:2] if x.shape[0] > 1 else x)
        module = torch.jit.load(path, map_location=case.device)

        return lambda: module(x, targets)  # grad mode on: the graph computes a gradient

    def _onnxruntime(self, case, model, layer, x, targets, cuda_graph: bool = False):
        """On CUDA, plain and explanation alike read and write CUDA tensors through IO binding."""
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise Unavailable("onnxruntime is not installed") from exc
        from export.ort_binding import BoundRun
        from export.runtime import session_options

        cuda = case.device.startswith("cuda")
        provider = "CUDAExecutionProvider" if cuda else "CPUExecutionProvider"
        if provider not in ort.get_available_providers():
            raise Unavailable(f"ONNX Runtime lacks {provider} (install onnxruntime-gpu)")
        if cuda_graph and not cuda:
            raise Unavailable("ONNX Runtime's CUDA graphs need a CUDA device")
        path = self._onnx_file(case, model, layer)
        providers = [(provider, {"enable_cuda_graph": "1"})] if cuda_graph else [provider]
        session = ort.InferenceSession(path, session_options(torch.get_num_threads(), spin=False), providers=providers)
        if not cuda:
            feed = {"input": x.cpu().numpy()}
            if case.method != "plain":
                feed["target"] = targets.cpu().numpy()
            return lambda: session.run(None, feed)
        run = BoundRun(session, torch.device(case.device), cuda_graph)
        inputs = {"input": x} | ({} if case.method == "plain" else {"target": targets})
        outputs: dict[str, tuple[int, ...]] = {"logits": (x.shape[0], self._classes(case))}
        if case.method != "plain":
            outputs["cam"] = (x.shape[0], IMAGE_SIZE, IMAGE_SIZE)
        return lambda: run(inputs, outputs)

    def _onnxruntime_graphs(self, case, model, layer, x, targets):
        return self._onnxruntime(case, model, layer, x, targets, cuda_graph=True)

    def _classes(self, case) -> int:
        """The model's number of classes (its logits' width)."""
        x, _ = self.inputs(case)
        with torch.no_grad():
            return int(self.model(case.model, case.device)(x[:1]).shape[1])

    def _onnx_file(self, case, model, layer) -> str:
        """The case's ONNX file (plain model or explanation), exported once per workdir."""
        from export import model_to_onnx, to_onnx

        example = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
        cpu_model = model if case.device == "cpu" else copy.deepcopy(model).cpu()
        path = self._path(case, f"{case.method}.onnx")
        if not os.path.exists(path):
            if case.method == "plain":
                model_to_onnx(cpu_model, path, example)
            else:
                to_onnx(Explainer(cpu_model, layer, case.method), path, example)
        return path

    def _aoti(self, case, model, layer, x, targets):
        from torch.export import Dim

        path = self._path(case, case.method) + ".pt2"  # aoti_load_package wants the suffix
        example = x[:2] if x.shape[0] > 1 else torch.cat([x, x])
        if not os.path.exists(path):
            if case.method == "plain":
                program = torch.export.export(model, (example,), dynamic_shapes=({0: Dim("batch", min=1)},))
                torch._inductor.aoti_compile_and_package(program, package_path=path)
            else:
                from export import to_aoti

                to_aoti(Explainer(model, layer, case.method), path, example)
        runner = torch._inductor.aoti_load_package(path)
        if case.method == "plain":
            return lambda: runner(x)
        return lambda: runner(x, targets)

    def _openvino(self, case, model, layer, x, targets):
        try:
            import openvino as ov
        except ImportError as exc:
            raise Unavailable("openvino is not installed (pip install 'deploycam[openvino]')") from exc
        if case.device != "cpu":
            raise Unavailable("OpenVINO cases run on the CPU here")
        compiled = ov.Core().compile_model(self._onnx_file(case, model, layer), "CPU",
                                           {"INFERENCE_PRECISION_HINT": "f32",
                                            "INFERENCE_NUM_THREADS": torch.get_num_threads()})
        request = compiled.create_infer_request()
        feed = {"input": x.numpy()} | ({} if case.method == "plain" else {"target": targets.numpy()})
        return lambda: request.infer(feed)

    def _opencv(self, case, model, layer, x, targets):
        from export.opencv_dnn import read_onnx

        if case.device != "cpu":
            raise Unavailable("OpenCV cases need OpenCV 5's DNN engine, on the CPU")
        try:
            net = read_onnx(self._onnx_file(case, model, layer))
        except ExportError as exc:
            raise Unavailable(str(exc)) from exc
        outputs = ["logits"] if case.method == "plain" else ["logits", "cam"]

        def run():
            net.setInput(x.numpy(), "input")
            if case.method != "plain":
                net.setInput(targets.numpy(), "target")
            return net.forward(outputs)
        return run

    def _peer_model(self, case, model):
        """Peers register hooks: give them their own copy so eager cases stay hook-free."""
        key = ("peer-model", case.model, case.device)
        if key not in self._cache:
            self._cache[key] = copy.deepcopy(model)
        return self._cache[key]

    def _pytorch_grad_cam(self, case, model, layer, x, targets):
        try:
            import pytorch_grad_cam as pgc
            from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        except ImportError as exc:
            raise Unavailable("pytorch-grad-cam is not installed (pip install 'deploycam[bench]')") from exc
        peer = self._peer_model(case, model)
        cls = {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "layercam": pgc.LayerCAM,
               "eigencam": pgc.EigenCAM}[case.method]
        key = ("pgc", case.model, case.device, case.method)
        if key not in self._cache:
            self._cache[key] = cls(model=peer, target_layers=[peer.get_submodule(layer)])
        cam = self._cache[key]
        wanted = [ClassifierOutputTarget(int(t)) for t in targets]
        return lambda: cam(input_tensor=x, targets=wanted)

    def _torchcam(self, case, model, layer, x, targets):
        try:
            from torchcam.methods import GradCAM
        except ImportError as exc:
            raise Unavailable("torchcam is not installed (pip install 'deploycam[bench]')") from exc
        peer = self._peer_model(case, model)
        key = ("torchcam", case.model, case.device)
        if key not in self._cache:
            self._cache[key] = GradCAM(peer, target_layer=layer)
        extractor = self._cache[key]
        classes = targets.tolist()

        def explain():
            scores = peer(x)
            maps = extractor(class_idx=classes, scores=scores)[0]
            return torch.nn.functional.interpolate(maps.unsqueeze(1), size=x.shape[-2:], mode="bilinear")
        return explain

    def _captum(self, case, model, layer, x, targets):
        try:
            from captum.attr import LayerAttribution, LayerGradCam
        except ImportError as exc:
            raise Unavailable("captum is not installed (pip install 'deploycam[bench]')") from exc
        peer = self._peer_model(case, model)
        attribution = LayerGradCam(peer, peer.get_submodule(layer))
        return lambda: LayerAttribution.interpolate(
            attribution.attribute(x, target=targets, relu_attributions=True), tuple(x.shape[-2:]))
