"""ONNX export + validation through the API and every CLI MODEL form."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import edgekit
from edgekit.core.errors import ExportError, UsageError
from tests.conftest import REPO, run_cli
from tests.fixtures.models import TwoInTwoOut, tiny_mlp


def test_multi_io_dynamic_export(tmp_path):
    torch.manual_seed(0)
    ex = {"image": np.random.rand(2, 3, 16, 16).astype(np.float32),
          "ids": np.random.randint(0, 50, (2, 5)).astype(np.int64)}
    b = edgekit.export(TwoInTwoOut().eval(), ex, targets="onnx", out=tmp_path, output_names=["logits", "features"],
                       dynamic={"image": {0: "batch"}, "ids": {0: "batch", 1: "seq"}})
    a = b.find("onnx")
    assert a.validation.passed and a.validation.cases >= 6  # example + random + 2 sizes per symbol
    assert a.extra["exporter"] == "dynamo"
    outs = {s.name: s.shape for s in b.manifest.outputs}
    assert outs == {"logits": ("batch", 4), "features": ("batch", 8, 16, 16)}
    s = edgekit.load(b.root)
    got = s.run({"image": np.random.rand(7, 3, 16, 16).astype(np.float32),
                 "ids": np.random.randint(0, 50, (7, 9)).astype(np.int64)})
    assert got["logits"].shape == (7, 4) and got["features"].shape == (7, 8, 16, 16)


def test_torchscript_fallback_records_reason(tmp_path):
    b = edgekit.export(tiny_mlp(), torch.randn(2, 6), targets="onnx", out=tmp_path,
                       options={"onnx": {"exporter": "torchscript"}})
    a = b.find("onnx")
    assert a.extra["exporter"] == "torchscript" and "requested" in a.extra["fallback_reason"]
    assert a.validation.passed


def test_fp16_onnx_within_tolerance(tmp_path):
    from edgekit.models import registry

    b = edgekit.export(registry.get("digits-cnn"), targets="onnx", precision="fp16", out=tmp_path)
    a16 = b.find("onnx", precision="fp16")
    assert a16.status == "ok" and a16.validation.max_abs_err <= a16.validation.tolerance
    assert b.find("onnx", precision="fp32") is not None  # fp32 ONNX is always the portable base
    assert a16.bytes < 0.6 * b.find("onnx", precision="fp32").bytes


def test_bad_target_and_precision():
    with pytest.raises(UsageError, match="unknown target 'tflite'"):
        edgekit.export(tiny_mlp(), torch.randn(1, 6), targets="tflite")
    with pytest.raises(UsageError, match="does not support precision int8w"):
        edgekit.export(tiny_mlp(), torch.randn(1, 6), targets="onnx", precision="int8w")
    with pytest.raises(UsageError, match="unknown task 'segmentation'"):
        edgekit.export(tiny_mlp(), torch.randn(1, 6), targets="onnx", task="segmentation")


def test_cli_default_export_table(tmp_path):
    r = run_cli("export", "--out", tmp_path, "--iters", "5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for word in ("target", "onnx", "validation", "err/tol", "p50 ms", "ok"):
        assert word in r.stdout
    r = run_cli("export", "--out", tmp_path, "--target", "onnx", "--iters", "5", "--json", "--force")
    data = json.loads(r.stdout)
    row = data["artifacts"][0]
    assert row["target"] == "onnx" and row["status"] == "ok" and row["max_abs_err"] <= 1e-4
    assert row["session"]["p50_ms"] > 0 and "speedup_vs_torch" not in row  # `edgekit bench` compares with torch


def test_cli_model_forms(tmp_path):
    # pkg.mod:fn with --input and --dynamic
    r = run_cli("export", "tests.fixtures.models:tiny_mlp", "--input", "x:2x6", "--dynamic", "x:0=batch",
                "--target", "onnx", "--out", tmp_path, "--no-bench", "--json", cwd=REPO)
    assert r.returncode == 0, r.stderr
    onnx_file = tmp_path / "tiny_mlp.edgekit" / "main.onnx"
    # FILE.onnx: re-export an ONNX file (no PyTorch reference: validated against ORT on the source)
    r = run_cli("export", onnx_file, "--target", "onnx,openvino", "--out", tmp_path / "again", "--no-bench", "--json")
    assert r.returncode == 0, r.stderr
    assert [a["status"] for a in json.loads(r.stdout)["artifacts"]] == ["ok", "ok"]
    # FILE.pt2
    ep = torch.export.export(tiny_mlp(), (torch.randn(2, 6),))
    torch.export.save(ep, tmp_path / "mlp.pt2")
    r = run_cli("export", tmp_path / "mlp.pt2", "--target", "onnx", "--out", tmp_path, "--no-bench", "--json")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("args,words", [
    (["export", "nope.onnx"], "does not exist"),
    (["export", "builtin:nope"], "unknown built-in model"),
    (["export", "--target", "tflite"], "unknown target"),
    (["export", "tests.fixtures.models:tiny_mlp", "--target", "onnx"], "--input"),
    (["export", "tests.fixtures.models:tiny_mlp", "--input", "x:2x6", "--dynamic", "y:0=batch"], "'y'"),
    (["export", "builtin:digits-cnn", "--input", "x:1x1x8x8", "--dynamic", "x:9=batch"], "rank"),
])
def test_cli_export_mistakes(tmp_path, args, words):
    r = run_cli(*args, "--out", tmp_path, cwd=REPO)
    assert r.returncode != 0 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not any(p.name.endswith(".edgekit") for p in tmp_path.iterdir())


def test_models_and_info(digits_bundle):
    r = run_cli("models", "--json")
    assert any(m["name"] == "digits-cnn" and m["default"] for m in json.loads(r.stdout))
    r = run_cli("info", digits_bundle)
    assert r.returncode == 0 and "x: float32[batch, 1, 8, 8]" in r.stdout
    assert json.loads(run_cli("info", digits_bundle, "--json").stdout)["name"] == "digits-cnn"


def test_dict_outputs_are_named_by_key(tmp_path):
    from tests.fixtures.models import DictOut

    b = edgekit.export(DictOut().eval(), torch.randn(3, 3), targets="onnx", out=tmp_path)
    assert [s.name for s in b.manifest.outputs] == ["scores", "probs"]
    assert set(edgekit.load(b.root).run({"x": np.ones((3, 3), np.float32)})) == {"scores", "probs"}


def test_traced_control_flow_is_flagged(tmp_path):
    from tests.fixtures.models import DataDependent

    # the trace bakes the x.sum() > 0 branch: the example x -1 takes the other one, so the graph is refused
    with pytest.raises(ExportError, match=r"baked in Python control flow .* other input magnitudes .*torch\.cond"):
        edgekit.export(DataDependent().eval(), torch.rand(2, 4), targets="onnx", out=tmp_path)
    b = edgekit.export(DataDependent().eval(), torch.rand(2, 4), targets="onnx", out=tmp_path,
                       accept_traced_control_flow=True)
    a = b.find("onnx")
    assert a.status == "ok" and a.extra["exporter"] == "torchscript" and a.extra["fallback_reason"]
    assert any("valid for inputs like the example" in n for n in a.extra["notes"])
    assert a.validation.detail["control_flow"]["accepted"] is True
    assert any(c.startswith("accepted without evidence") for c in a.validation.detail["caveats"])
