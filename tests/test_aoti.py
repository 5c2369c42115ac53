"""export.to_aoti: AOTInductor packages against eager (fresh batches, given classes), loaded by export.load
and by plain torch without deploycam, errors, and the CLI. (Each package is a C++ compile: ~15-60 s.)"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import export
from deploycam.cli import main
from explainer import Explainer
from explainer.errors import ExportError
from tests.helpers import calibrated_model, random_input

CASES = {
    "resnet18-layer3-gradcam-full": ("resnet18", "layer3", "gradcam", "full"),
    "mobilenet_v3_small-features-hirescam-head": ("mobilenet_v3_small", "features", "hirescam", "head"),
}


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    folder = tmp_path_factory.mktemp("aoti")
    made = {}
    for name, (arch, layer, method, part) in CASES.items():
        explainer = Explainer(calibrated_model(arch), layer, method)
        path = folder / f"{name}.pt2"
        info = export.to_aoti(explainer, path, random_input(2, 64), part=part)
        made[name] = (explainer, path, info)
    return made


def _activations(explainer, x):
    with torch.no_grad():
        out = explainer.backbone(x)
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("name", list(CASES))
def test_package_equals_eager_on_fresh_batches(packages, name):
    explainer, path, info = packages[name]
    part = CASES[name][3]
    assert info.format == "aoti" and info.part == part
    rt = export.load(path)
    assert rt.backend == "aoti/cpu" and rt.info == info
    for n, seed in ((3, 11), (1, 12)):
        x = random_input(n, 64, seed=seed)
        if part == "full":
            result = export.compare(explainer, rt, x)
            assert result.ok, result
            given = list(range(5, 5 + n))
            assert (rt(x, given).cams - explainer(x, given).cams).abs().max() <= 1e-4
        else:
            a = _activations(explainer, x)
            eager = explainer(x, [7] * n)
            ours = rt(a, [7] * n)
            h, w = ours.cams.shape[-2:]
            expected = torch.nn.functional.interpolate(eager.raw[:, None], size=(h, w))[:, 0]  # same size
            lo = expected.amin((1, 2), keepdim=True)
            expected = (expected - lo) / (expected.amax((1, 2), keepdim=True) - lo + 1e-7)
            assert (ours.cams - expected).abs().max() <= 1e-4
            assert torch.allclose(ours.logits, eager.logits, atol=1e-4)


def test_plain_torch_loads_the_package_without_deploycam(packages):
    explainer, path, _ = packages["resnet18-layer3-gradcam-full"]
    x = random_input(2, 64, seed=13)
    np.save(os.path.join(os.path.dirname(path), "x.npy"), x.numpy())
    code = (
        "import sys, json, numpy as np, torch\n"
        "sys.modules['explainer'] = sys.modules['export'] = sys.modules['deploycam'] = None  # importing them fails\n"
        f"runner = torch._inductor.aoti_load_package({str(path)!r})\n"
        f"x = torch.from_numpy(np.load({os.path.join(os.path.dirname(path), 'x.npy')!r}))\n"
        "logits, cam = runner(x, torch.tensor([3, -1]))\n"
        "print(json.loads(runner.get_metadata()['deploycam'])['layer'])\n"
        f"np.save({os.path.join(os.path.dirname(path), 'cam.npy')!r}, cam.numpy())\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd="/")
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().endswith("layer3")
    cam = np.load(os.path.join(os.path.dirname(path), "cam.npy"))
    expected = torch.cat([explainer(x[:1], 3).cams, explainer(x[1:]).cams]).numpy()
    assert np.abs(cam - expected).max() <= 1e-4


def test_package_errors(tmp_path, packages):
    explainer = Explainer(calibrated_model("resnet18"), "layer4", "gradcam")
    with pytest.raises(ExportError, match=r"\.pt2"):
        export.to_aoti(explainer, tmp_path / "x.pt", random_input(2, 64))
    with pytest.raises(ExportError, match="re-runs the network"):
        export.to_aoti(explainer.with_method("scorecam"), tmp_path / "x.pt2", random_input(2, 64))
    _, path, _ = packages["resnet18-layer3-gradcam-full"]
    with pytest.raises(ExportError, match="compiled for cpu"):
        export.load(path, device="cuda")
    (tmp_path / "junk.pt2").write_bytes(b"not a package")
    with pytest.raises(ExportError, match="not an AOTInductor package"):
        export.load(tmp_path / "junk.pt2")


def test_cli_exports_an_aoti_package(tmp_path, capsys):
    out = tmp_path / "m.pt2"
    code = main(["export", "--model", "resnet18", "--layer", "layer4", "--size", "64", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "aoti" in captured.out and "max |cam - eager|" in captured.out
    assert main(["export", "--model", "resnet18", "--format", "aoti", "--out", str(tmp_path / "m.bin")]) == 2
    assert "must end in .pt2" in capsys.readouterr().err
