"""Models edgekit had not seen: the export/validate/run path must fail per artifact, retry, or refuse
bad input with one clear error -- never crash or write a bundle whose spec the model cannot honour."""
from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import edgekit
from edgekit.core.errors import DataError, UsageError
from edgekit.exporters import onnx as onnx_exporter
from tests.conftest import run_cli


class TwoIn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 4), nn.Linear(6, 4)

    def forward(self, x, y):
        return self.a(x) + self.b(y)


def _static_dynamo(job, args, shapes, path, opset):
    """Stands in for a dynamo export that baked a dynamic size into the graph (as it does for
    nn.GRU with a dynamic sequence axis in torch 2.13): a graph valid for the example shape only."""
    torch.onnx.export(job.module, args, str(path), input_names=job.input_names, output_names=job.output_names,
                      opset_version=opset, dynamo=False)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


class Reshaper(nn.Module):
    """Reads its batch size from the input shape: a static export bakes it into a Reshape."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(8, 3)

    def forward(self, x):
        return self.lin(x.reshape(x.shape[0], -1))


def test_artifact_that_raises_on_a_case_fails_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_exporter, "_dynamo", _static_dynamo)
    b = edgekit.export(Reshaper().eval(), torch.randn(2, 2, 4), targets="onnx,openvino", out=tmp_path,
                       dynamic={"x": {0: "batch"}}, options={"onnx": {"exporter": "dynamo"}})  # no retry: forced
    arts = {a.target: a for a in b.manifest.artifacts}
    assert arts["onnx"].status == "failed"
    assert "the artifact raised on inputs x[" in arts["onnx"].status_reason
    assert "max abs err" not in arts["onnx"].status_reason  # the reason is the error, not a bogus error size
    assert arts["openvino"].status == "ok"  # the other target is unaffected


def test_dynamo_graph_failing_validation_is_reexported_with_torchscript(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_exporter, "_dynamo", _static_dynamo)
    m = Reshaper().eval()
    b = edgekit.export(m, torch.randn(2, 2, 4), targets="onnx", out=tmp_path, dynamic={"x": {0: "batch"}})
    (art,) = b.manifest.artifacts
    assert art.status == "ok" and art.extra["exporter"] == "torchscript"
    assert art.extra["retry_reason"].startswith("dynamo: validation failed")
    assert any("re-exported with" in n for n in art.extra["notes"])
    x = np.random.default_rng(0).standard_normal((5, 2, 4)).astype(np.float32)
    got = edgekit.load(b.root)({"x": x})["output"]
    np.testing.assert_allclose(got, m(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


def test_dynamic_axis_the_model_cannot_vary_is_refused(tmp_path):
    with pytest.raises(UsageError, match=r"x:1=feat: the model itself fails when 'feat' is not 8"):
        edgekit.export(_model(), torch.randn(2, 8), targets="onnx", out=tmp_path, dynamic={"x": {1: "feat"}})
    assert list(tmp_path.iterdir()) == []  # nothing half-written


@pytest.mark.parametrize("dynamic,words", [
    ({"inp": {0: "batch"}}, "input 'inp'"),
    ({"x": {2: "batch"}}, "has rank 2"),
    ({"x": [0]}, "must map input name"),
    ({"x": {0: ""}}, "non-empty string"),
])
def test_bad_dynamic_specs_are_usage_errors(tmp_path, dynamic, words):
    with pytest.raises(UsageError, match=words):
        edgekit.export(_model(), torch.randn(2, 8), targets="onnx", out=tmp_path, dynamic=dynamic)


def test_dynamic_symbol_with_two_example_sizes_is_refused(tmp_path):
    with pytest.raises(UsageError, match="'batch' is 2 at x:0 but 3 at y:0"):
        edgekit.export(TwoIn().eval(), (torch.randn(2, 8), torch.randn(3, 6)), targets="onnx", out=tmp_path,
                       dynamic={"x": {0: "batch"}, "y": {0: "batch"}})


def test_negative_dynamic_axis_is_normalised(tmp_path):
    b = edgekit.export(_model(), torch.randn(2, 8), targets="onnx", out=tmp_path, dynamic={"x": {-2: "batch"}})
    assert b.manifest.inputs[0].shape == ("batch", 8) and b.manifest.artifacts[0].status == "ok"


def test_output_name_count_must_match(tmp_path):
    class TwoOut(nn.Module):
        def forward(self, x):
            return x + 1, x * 2

    with pytest.raises(UsageError, match=r"returns 2 output tensor\(s\) but 1 output name"):
        edgekit.export(TwoOut(), torch.randn(2, 3), targets="onnx", out=tmp_path, output_names=["only"])


def test_model_failing_on_its_example_is_an_export_error(tmp_path):
    from edgekit.core.errors import ExportError

    with pytest.raises(ExportError, match="fails on its own example inputs"):
        edgekit.export(TwoIn().eval(), (torch.randn(2, 8), torch.randn(2, 7)), targets="onnx", out=tmp_path)


def test_calibration_error_is_not_wrapped_twice(tmp_path):
    from edgekit.exporters.calib import load_calibration
    from edgekit.core.specs import TensorSpec

    np.savez(tmp_path / "c.npz", x=np.zeros((4, 8), np.float32))
    specs = [TensorSpec("x", "float32", (2, 8)), TensorSpec("y", "float32", (2, 6))]
    with pytest.raises(DataError) as e:
        load_calibration(tmp_path / "c.npz", specs)
    assert "no array for input(s) ['y']" in str(e.value) and str(e.value).count("(fix:") == 1


def test_pt2_keeps_the_programs_dynamic_dims(tmp_path):
    from edgekit.models.resolve import resolve

    batch = torch.export.Dim("b")
    ep = torch.export.export(TwoIn().eval(), (torch.randn(3, 8), torch.randn(3, 6)),
                             dynamic_shapes=({0: batch}, {0: batch}))
    torch.export.save(ep, tmp_path / "dyn.pt2")
    src = resolve(str(tmp_path / "dyn.pt2"))
    assert src.dynamic == {"x": {0: "x_0"}, "y": {0: "x_0"}}
    b = edgekit.export(src, targets="onnx", out=tmp_path / "out")
    assert b.manifest.inputs[0].shape == ("x_0", 8) and b.manifest.artifacts[0].status == "ok"
    assert edgekit.load(b.root)({"x": np.ones((7, 8), np.float32), "y": np.ones((7, 6), np.float32)})["output"].shape == (7, 4)


MODELS = textwrap.dedent("""
    import torch
    from torch import nn

    def not_a_module():
        return 42

    def explodes():
        raise RuntimeError("user code exploded")

    class TwoIn(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 4), nn.Linear(6, 4)

        def forward(self, x, y):
            return self.a(x) + self.b(y)

    def two_in():
        return TwoIn()
""")


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("user")
    (d / "usermodels.py").write_text(MODELS)
    return d


@pytest.mark.parametrize("args,words", [
    (["usermodels:not_a_module", "--input", "x:1x8"], "returned int, not a torch.nn.Module"),
    (["usermodels:explodes"], "calling usermodels:explodes() failed: RuntimeError: user code exploded"),
    (["usermodels:two_in", "--input", "x:2x8", "--input", "y:2x7"], "fails on --input x:2x8 --input y:2x7"),
])
def test_cli_user_function_mistakes(user_dir, tmp_path, args, words):
    r = run_cli("export", *args, "-t", "onnx", "--out", tmp_path, "--no-bench", cwd=user_dir)
    assert r.returncode == 1 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "internal error" not in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_two_input_model_end_to_end(user_dir, tmp_path):
    r = run_cli("export", "usermodels:two_in", "--input", "x:2x8", "--input", "y:2x6", "--dynamic", "x:0=batch",
                "--dynamic", "y:0=batch", "-t", "onnx", "--out", tmp_path, "--no-bench", "--json", cwd=user_dir)
    assert r.returncode == 0, r.stderr
    assert [a["status"] for a in json.loads(r.stdout)["artifacts"]] == ["ok"]
    bundle = tmp_path / "two_in.edgekit"
    np.save(tmp_path / "one.npy", np.ones((3, 8), np.float32))
    r = run_cli("run", bundle, "--input", tmp_path / "one.npy")
    assert r.returncode == 1 and "one.npy holds one array but the model has 2 inputs (x, y)" in r.stderr, r.stderr
    assert "not a readable" not in r.stderr
    np.savez(tmp_path / "xy.npz", x=np.ones((3, 8), np.float32), y=np.ones((3, 6), np.float32))
    r = run_cli("run", bundle, "--input", tmp_path / "xy.npz", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["outputs"]["output"]["shape"] == [3, 4]


def test_cli_bench_batch_on_a_fixed_batch_model_is_refused(tmp_path):
    b = edgekit.export(_model(), torch.randn(2, 8), targets="onnx", out=tmp_path)
    r = run_cli("bench", b.root, "--batch", "4", "--iters", "2", "--warmup", "1", "--no-torch")
    assert r.returncode == 1 and "--batch 4: graph 'main' has a fixed batch axis" in r.stderr, r.stderr
    r = run_cli("bench", b.root, "--iters", "2", "--warmup", "1", "--no-torch", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["artifacts"][0]["batch"] == 2, r.stderr


def test_validation_that_cannot_discriminate_says_so(tmp_path):
    class ZeroHead(nn.Module):  # like torchvision's ViT with weights=None: the head starts at zero
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = nn.Linear(8, 8), nn.Linear(8, 3)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

        def forward(self, x):
            return self.head(self.body(x).relu())

    b = edgekit.export(ZeroHead().eval(), torch.randn(2, 8), targets="onnx", out=tmp_path)
    (art,) = b.manifest.artifacts
    assert art.status == "ok"
    assert any("outputs did not change with the inputs" in c for c in art.validation.detail["caveats"])
    b = edgekit.export(_model(), torch.randn(2, 8), targets="onnx", out=tmp_path / "normal")
    assert "caveats" not in b.manifest.artifacts[0].validation.detail

    class Tiny(nn.Module):  # outputs ~1e-6: judged against their own scale, not against 1
        def forward(self, x):
            return x * 1e-6

    b = edgekit.export(Tiny(), torch.randn(2, 8), targets="onnx", out=tmp_path / "tiny")
    v = b.manifest.artifacts[0].validation
    assert "caveats" not in v.detail and v.tolerance < 1e-9 and v.max_abs_err <= v.tolerance


def test_cli_integer_inputs_are_not_one_constant():
    from edgekit.exporters.validate import make_cases
    from edgekit.models.examples import examples_from_specs as _examples

    ex = _examples(["ids:4x16:int64", "mask:4x16:bool", "x:4x16"])
    assert set(np.unique(ex["ids"])) == {0, 1} and ex["mask"].dtype == np.bool_ and ex["mask"].any()
    case = make_cases(ex, None)[1]  # the random validation case must not replay the example
    assert not np.array_equal(case["ids"], ex["ids"])
    assert np.abs(case["x"] - ex["x"]).max() > 0.5


def test_openvino_ir_keeps_the_manifest_shapes(tmp_path):
    import openvino as ov

    conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    b = edgekit.export(conv, torch.randn(1, 3, 16, 16), targets="openvino", out=tmp_path / "static")
    art = next(a for a in b.manifest.artifacts if a.target == "openvino")
    ir = ov.Core().read_model(str(b.path(art) / "model.xml"))
    assert art.status == "ok" and str(ir.inputs[0].get_partial_shape()) == "[1,3,16,16]"  # not [?,3,?,?]
    b = edgekit.export(conv, torch.randn(1, 3, 16, 16), targets="openvino", out=tmp_path / "dyn",
                       dynamic={"x": {0: "batch"}})
    art = next(a for a in b.manifest.artifacts if a.target == "openvino")
    ir = ov.Core().read_model(str(b.path(art) / "model.xml"))
    assert art.status == "ok" and str(ir.inputs[0].get_partial_shape()) == "[?,3,16,16]"


def test_openvino_int8_of_a_fixed_batch_model_takes_batch1_calibration(tmp_path):
    rng = np.random.default_rng(0)
    calib = {"x": rng.standard_normal((16, 8)).astype(np.float32)}  # split into 16 samples of [1, 8]
    b = edgekit.export(_model(), torch.randn(2, 8), targets="openvino", precision="int8", out=tmp_path, calib=calib)
    art = next(a for a in b.manifest.artifacts if a.precision == "int8")
    # built and validated: 2 cases + the 8 calibration pairs (too few to hold out: judged on all of them)
    assert art.validation is not None and art.validation.cases == 10, art.status_reason
    assert art.status == "ok" or art.status_reason.startswith("validation failed")


def test_retry_that_fails_too_keeps_both_reasons(tmp_path, monkeypatch):
    def no_torchscript(*a, **k):
        raise RuntimeError("torchscript unavailable")

    monkeypatch.setattr(onnx_exporter, "_dynamo", _static_dynamo)
    monkeypatch.setattr(onnx_exporter, "_torchscript", no_torchscript)
    b = edgekit.export(Reshaper().eval(), torch.randn(2, 2, 4), targets="onnx,openvino", out=tmp_path,
                       dynamic={"x": {0: "batch"}})
    arts = {a.target: a for a in b.manifest.artifacts}
    reason = arts["onnx"].status_reason
    assert arts["onnx"].status == "failed" and reason.startswith("dynamo: validation failed: case")
    assert "the retry with {'exporter': 'torchscript'} failed too" in reason and "torchscript unavailable" in reason
    assert arts["openvino"].status == "ok"


def test_compare_reports_a_raising_case():
    from edgekit.exporters.validate import compare, run_cases

    def run(feeds):
        if feeds["x"].shape[0] != 2:
            raise ValueError("Reshape: cannot reshape {3,4} to {2,4}")
        return {"y": feeds["x"] * 2}

    cases = [{"x": np.ones((2, 4), np.float32)}, {"x": np.ones((3, 4), np.float32)}]
    refs = [{"y": c["x"] * 2} for c in cases]
    v = compare(refs, run_cases(run, cases), "fp32")
    assert not v.passed and v.max_abs_err == 0.0
    assert v.detail["mismatch"] == ["case 1: the artifact raised on inputs x[3, 4]: ValueError: "
                                    "Reshape: cannot reshape {3,4} to {2,4}"]
