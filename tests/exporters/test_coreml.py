"""Core ML: mlprogram at fp32/fp16/int8 weights; on Linux the spec checks run and the artifact is
honestly marked not numerically validated."""
from __future__ import annotations

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("coremltools")

import edgekit  # noqa: E402
from edgekit.core.bundle import Graph  # noqa: E402
from edgekit.core.errors import BackendUnavailableError  # noqa: E402
from edgekit.core.specs import TensorSpec  # noqa: E402

ON_MAC = sys.platform == "darwin"


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 32, 3, padding=1)
        self.head = torch.nn.Linear(32, 40)  # 1280 weights: above the int8 weight threshold

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    torch.manual_seed(0)
    calib = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    return edgekit.export(Net().eval(), torch.randn(1, 1, 8, 8), targets="coreml", out=tmp_path_factory.mktemp("cm"),
                          name="net", precision="fp32,int8", dynamic={"x": {0: "batch"}}, calib=calib,
                          options={"coreml": {"minimum_deployment_target": "iOS17"}})


@pytest.mark.skipif(ON_MAC, reason="on macOS the numeric check runs instead")
def test_linux_marks_not_validated_with_checks(bundle):
    for prec in ("fp32", "int8"):
        art = bundle.find(target="coreml", precision=prec)
        assert art.status == "not-validated" and art.status_reason == "numeric check needs macOS"
        v = art.validation
        assert v.passed is None and v.max_abs_err is None  # no number is claimed
        d = v.detail
        assert d["io_check"]["passed"] and d["spec"]["op_count"] > 0
        assert [i["name"] for i in d["spec"]["inputs"]] == ["x"] and d["spec"]["inputs"][0]["shape"][0] == [1, 64]
        assert [o["name"] for o in d["spec"]["outputs"]] == ["output"]
        assert d["spec"]["outputs"][0]["dtype"] == "FLOAT32"
        assert art.extra["minimum_deployment_target"] == "iOS17" and art.path.endswith(".mlpackage")
    int8 = bundle.find(target="coreml", precision="int8")
    assert int8.validation.detail["spec"]["quantized_weights"] >= 1
    assert int8.validation.detail["io_check"]["fp16_tensors"] > 0
    assert bundle.find(target="coreml", precision="fp32").validation.detail["io_check"]["fp16_tensors"] == 0


@pytest.mark.skipif(ON_MAC, reason="Core ML predicts on macOS")
def test_runtime_needs_macos(bundle):
    from edgekit.runtimes.coreml import CoreMLBackend

    assert CoreMLBackend.available() is False
    with pytest.raises(BackendUnavailableError):
        edgekit.load(bundle.root, backend="coreml")
    art = bundle.find(target="coreml")
    with pytest.raises(BackendUnavailableError, match="need macOS"):
        CoreMLBackend(bundle.path(art), art, bundle.graph("main"))


def test_spec_check_catches_mismatches(bundle):
    from edgekit.runtimes.coreml import check_spec, inspect_spec

    art = bundle.find(target="coreml", precision="fp32")
    info = inspect_spec(bundle.path(art))
    wrong = Graph("main", [TensorSpec("image", "float32", ("batch", 1, 8, 8))], [TensorSpec("output", "float32", ("batch", 40))])
    assert any("names" in p for p in check_spec(info, wrong, "fp32")["problems"])
    rank = Graph("main", [TensorSpec("x", "float32", ("batch", 8, 8))], [TensorSpec("output", "float32", ("batch", 40))])
    assert any("rank" in p for p in check_spec(info, rank, "fp32")["problems"])
    assert any("fp16" in p for p in check_spec(info, bundle.graph("main"), "fp16")["problems"])
    assert check_spec(info, bundle.graph("main"), "fp32")["passed"]


def test_missing_coremltools_names_the_extra(monkeypatch):
    from edgekit.exporters import coreml as cmx

    monkeypatch.setitem(sys.modules, "coremltools", None)
    with pytest.raises(BackendUnavailableError, match=r'pip install "edgekit\[coreml\]"'):
        cmx.import_coremltools()
