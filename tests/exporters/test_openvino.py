"""OpenVINO exporter + runtime: fp32/fp16/int8, conversion fallbacks, devices, hints, static shapes."""
from __future__ import annotations

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("openvino")

import edgekit  # noqa: E402
from edgekit.core.bundle import Artifact, Graph  # noqa: E402
from edgekit.core.errors import BackendUnavailableError, DataError, UsageError  # noqa: E402
from edgekit.exporters.adapter import adapt  # noqa: E402
from edgekit.exporters.job import ExportJob  # noqa: E402
from edgekit.core.specs import TensorSpec  # noqa: E402


class TinyCNN(torch.nn.Module):
    """Depthwise conv + residual, like the mobile nets the issue names."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = torch.nn.Conv2d(8, 8, 1)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        y = y + torch.relu(self.pw(self.dw(y)))
        return self.head(y.mean((2, 3)))


class TwoInTwoOut(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(6, 4)
        self.b = torch.nn.Linear(3, 4)

    def forward(self, feats, extra):
        h = torch.tanh(self.a(feats) + self.b(extra))
        return h.sum(-1, keepdim=True), h * 2


@pytest.fixture(scope="module")
def cnn_bundle(tmp_path_factory):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((64, 1, 12, 12)).astype(np.float32)
    return edgekit.export(TinyCNN().eval(), torch.randn(1, 1, 12, 12), targets="openvino", name="cnn",
                          out=tmp_path_factory.mktemp("ov"), precision="fp32,int8", dynamic={"x": {0: "batch"}},
                          calib=calib, metadata={"task": "classification"})


def test_fp32_and_int8_validated(cnn_bundle):
    fp32 = cnn_bundle.find(target="openvino", precision="fp32")
    int8 = cnn_bundle.find(target="openvino", precision="int8")
    assert fp32.status == "ok" and fp32.validation.max_abs_err <= 1e-4 * max(1, fp32.validation.detail["output_scale"])
    assert fp32.extra["source"] == "onnx" and fp32.toolchain["openvino"]  # converted from the validated ONNX
    # calibrated on the first 32 samples, judged on the 32 held out (and said so)
    assert int8.status == "ok" and int8.toolchain["nncf"] and int8.extra["calib_samples"] == 32
    d = int8.validation.detail
    assert d["judged_cases"] == 32 and "last 32 of 64" in d["judged_on"] and d["task"] == "classification"
    assert d["outputs"]["output"]["top1_agreement"] >= 0.9 and d["outputs"]["output"]["top5_contains"] >= 0.99
    assert int8.extra["model_type"] == "default" and "no attention" in int8.extra["model_type_reason"]
    assert int8.extra["reused"]  # the fp32 conversion of the graph, not a second one
    assert (cnn_bundle.path(fp32) / "model.xml").is_file() and (cnn_bundle.path(fp32) / "model.bin").is_file()


def test_runtime_devices_hints_and_static_shapes(cnn_bundle):
    x = np.random.default_rng(1).standard_normal((3, 1, 12, 12)).astype(np.float32)
    ref = edgekit.load(cnn_bundle.root, backend="onnxruntime").run({"x": x})["output"]
    s = edgekit.load(cnn_bundle.root, backend="openvino", precision="fp32", hint="THROUGHPUT", device="AUTO")
    assert np.abs(s.run({"x": x})["output"] - ref).max() < 1e-4
    static = edgekit.load(cnn_bundle.root, backend="openvino", precision="fp32", static_shapes=True)
    assert static.backend.static_shapes == {"x": [1, 1, 12, 12]}
    assert static.run({"x": x[:1]})["output"].shape == (1, 10)
    fixed = edgekit.load(cnn_bundle.root, backend="openvino", precision="fp32", static_shapes={"x": [3, 1, 12, 12]})
    assert np.abs(fixed.run({"x": x})["output"] - ref).max() < 1e-4
    with pytest.raises(BackendUnavailableError, match="not present"):
        edgekit.load(cnn_bundle.root, backend="openvino", device="NPU")
    with pytest.raises(UsageError, match="performance hint"):
        edgekit.load(cnn_bundle.root, backend="openvino", hint="FASTEST")
    with pytest.raises(UsageError, match="unknown input"):
        edgekit.load(cnn_bundle.root, backend="openvino", static_shapes={"y": [1]})


def _job(module, examples, outs, precision, tmp_path, **kw):
    names = list(examples)
    return ExportJob(adapt(module, names), {n: torch.from_numpy(a) for n, a in examples.items()}, names, outs,
                     kw.pop("dynamic", None), precision, tmp_path, **kw)


def test_fp16_two_inputs_two_outputs_named(tmp_path):
    from edgekit.exporters import openvino as ovx
    from edgekit.runtimes.openvino import OpenVINOBackend

    torch.manual_seed(0)
    m = TwoInTwoOut().eval()
    rng = np.random.default_rng(0)
    ex = {"feats": rng.standard_normal((2, 6)).astype(np.float32), "extra": rng.standard_normal((2, 3)).astype(np.float32)}
    res = ovx.export(_job(m, ex, ["score", "hidden"], "fp16", tmp_path, dynamic={"feats": {0: "b"}, "extra": {0: "b"}}))
    assert res.extra["weights"].startswith("fp16")
    g = Graph("main", [TensorSpec("feats", "float32", ("b", 6)), TensorSpec("extra", "float32", ("b", 3))],
              [TensorSpec("score", "float32", ("b", 1)), TensorSpec("hidden", "float32", ("b", 4))])
    be = OpenVINOBackend(res.path, Artifact("openvino", "main", "fp16", "x", extra=res.extra), g)
    feeds = {"extra": ex["extra"][:1], "feats": ex["feats"][:1]}  # dict order must not matter
    out = be.run(feeds)
    with torch.no_grad():
        s, h = m(torch.from_numpy(feeds["feats"]), torch.from_numpy(feeds["extra"]))
    assert list(out) == ["score", "hidden"]
    assert np.abs(out["score"] - s.numpy()).max() < 1e-2 and np.abs(out["hidden"] - h.numpy()).max() < 1e-2


def test_onnx_fallback_reason_recorded(tmp_path, monkeypatch):
    from edgekit.exporters import openvino as ovx

    torch.manual_seed(0)
    m = TinyCNN().eval()
    x = np.random.default_rng(0).standard_normal((1, 1, 12, 12)).astype(np.float32)
    onnx_path = tmp_path / "m.onnx"
    torch.onnx.export(m, (torch.from_numpy(x),), str(onnx_path), input_names=["x"], output_names=["output"], dynamo=False)

    def boom(job, ov):
        raise RuntimeError("converter exploded")

    res = ovx.export(_job(m, {"x": x}, ["output"], "fp32", tmp_path / "w0", onnx_path=onnx_path))
    assert res.extra["source"] == "onnx" and "fallback_reason" not in res.extra  # the ONNX comes first
    monkeypatch.setattr(ovx, "_from_onnx", boom)
    monkeypatch.setattr(ovx, "_from_exported_program", boom)
    res = ovx.export(_job(m, {"x": x}, ["output"], "fp32", tmp_path / "w", onnx_path=onnx_path))
    assert res.extra["source"] == "module"
    assert res.extra["fallback_reason"] == {"onnx": "RuntimeError: converter exploded",
                                            "exported_program": "RuntimeError: converter exploded"}
    assert any("fell back" in n for n in res.notes)


def test_int8_without_calibration_is_a_clear_error(tmp_path):
    from edgekit.exporters import openvino as ovx

    x = np.zeros((1, 1, 12, 12), np.float32)
    with pytest.raises(DataError, match="--calib"):
        ovx.export(_job(TinyCNN().eval(), {"x": x}, ["output"], "int8", tmp_path))


def test_missing_openvino_names_the_extra(monkeypatch, tmp_path):
    from edgekit.exporters import openvino as ovx
    from edgekit.runtimes import openvino as ovr

    monkeypatch.setitem(sys.modules, "openvino", None)
    for fn in (ovr.import_openvino, ovx.import_openvino):
        with pytest.raises(BackendUnavailableError) as e:
            fn()
        assert str(e.value).count("\n") == 0 and 'pip install "edgekit[openvino]"' in str(e.value)
    assert ovr.OpenVINOBackend.available() is False


def test_static_shape_map_pure():
    from edgekit.runtimes.openvino import static_shape_map

    g = Graph("main", [TensorSpec("ids", "int64", ("batch", "seq")), TensorSpec("m", "int64", ("batch", 4))], [])
    assert static_shape_map(g, None, None) is None
    assert static_shape_map(g, {"ids": [2, 16]}, True) == {"ids": [2, 16], "m": [1, 4]}
    assert static_shape_map(g, None, {"ids": (1, 8)}) == {"ids": [1, 8]}


def test_cli_without_openvino_prints_one_line(cnn_bundle, tmp_path):
    import subprocess

    np.savez(tmp_path / "x.npz", x=np.zeros((1, 1, 12, 12), np.float32))
    code = ("import sys; sys.modules['openvino'] = None; from edgekit.cli.main import main; "
            f"main(['run', {str(cnn_bundle.root)!r}, '--backend', 'openvino', '-i', {str(tmp_path / 'x.npz')!r}])")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    lines = [line for line in p.stderr.splitlines() if line.startswith("edgekit:")]
    assert len(lines) == 1 and 'pip install "edgekit[openvino]"' in lines[0], p.stderr
