"""The torch-free runtime: input checks, dynamic batch, no torch import, CLI run."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import edgekit
from edgekit.core.errors import (BackendUnavailableError, InputDtypeError, InputError, InputNameError,
                            InputRankError, InputShapeError)
from edgekit.models.digits import heldout
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def sess(digits_bundle):
    return edgekit.load(digits_bundle, backend="onnxruntime")


def test_session_protocol(sess):
    assert [s.name for s in sess.inputs] == ["x"] and [s.name for s in sess.outputs] == ["logits"]
    x, _ = heldout()
    out = sess({"x": x[:3]})
    assert set(out) == {"logits"} and out["logits"].shape == (3, 10)
    np.testing.assert_array_equal(out["logits"], sess.run_raw({"x": x[:3]})["logits"])


@pytest.mark.parametrize("batch", [1, 7])
def test_dynamic_batch(sess, batch):
    x, _ = heldout()
    assert sess.run({"x": x[:batch]})["logits"].shape == (batch, 10)


def test_reproduces_pytorch_on_heldout(sess):
    import torch

    from edgekit.models.digits import load_module

    x, y = heldout()
    with torch.inference_mode():
        ref = load_module()(torch.from_numpy(x)).numpy()
    got = sess.run({"x": x})["logits"]
    assert np.abs(got - ref).max() <= 1e-4
    assert (got.argmax(1) == ref.argmax(1)).all()
    assert (got.argmax(1) == y).mean() > 0.95


@pytest.mark.parametrize("feeds,exc,words", [
    ({"image": np.zeros((1, 1, 8, 8), np.float32)}, InputNameError, "unknown input name 'image'"),
    ({}, InputNameError, "missing input 'x'"),
    ({"x": np.zeros((1, 1, 8, 8), np.float64)}, InputDtypeError, "dtype float64"),
    ({"x": np.zeros((1, 8, 8), np.float32)}, InputRankError, "rank 3"),
    ({"x": np.zeros((1, 1, 8, 9), np.float32)}, InputShapeError, "axis 3"),
])
def test_input_errors(sess, feeds, exc, words):
    with pytest.raises(exc, match=words) as info:
        sess.run(feeds)
    assert isinstance(info.value, InputError) and "\n" not in str(info.value)


def test_symbolic_dims_must_agree(tmp_path):
    import torch

    class Add(torch.nn.Module):
        def forward(self, a, b):
            return a + b

    ex = {"a": np.ones((2, 3), np.float32), "b": np.ones((2, 3), np.float32)}
    b = edgekit.export(Add(), ex, targets="onnx", out=tmp_path, dynamic={"a": {0: "n"}, "b": {0: "n"}})
    s = edgekit.load(b.root)
    assert s.run({"a": np.ones((5, 3), np.float32), "b": np.ones((5, 3), np.float32)})["output"].shape == (5, 3)
    with pytest.raises(InputShapeError, match="'n' is 5 in one input but 4"):
        s.run({"a": np.ones((5, 3), np.float32), "b": np.ones((4, 3), np.float32)})


def test_unknown_backend_and_missing_artifact(digits_bundle):
    from edgekit.core.errors import BundleError, UsageError

    with pytest.raises(UsageError, match="unknown backend"):
        edgekit.load(digits_bundle, backend="tpu")
    with pytest.raises((BundleError, BackendUnavailableError), match="openvino"):
        edgekit.load(digits_bundle, backend="openvino", precision="int8")


def test_runtime_imports_without_torch(digits_bundle, no_torch_env):
    code = ("import sys, numpy as np, edgekit.runtimes, edgekit\n"
            "try:\n    import torch\nexcept ImportError:\n    pass\nelse:\n    raise SystemExit('torch importable')\n"
            f"s = edgekit.load({str(digits_bundle)!r})\n"
            "y = s.run({'x': np.zeros((2, 1, 8, 8), np.float32)})['logits']\n"
            "assert y.shape == (2, 10)\n"
            "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules)\n"
            "print('ok')\n")
    env = {**__import__("os").environ, **no_torch_env}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    r = subprocess.run([sys.executable, "-m", "edgekit", "validate", str(digits_bundle), "--json"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["artifacts"][0]["result"] == "pass"


def test_cli_run_matches_pytorch_predictions(digits_bundle, tmp_path):
    import torch

    from edgekit.models.digits import load_module

    x, _ = heldout()
    np.savez(tmp_path / "digits.npz", x=x[:50])
    r = run_cli("run", digits_bundle, "--input", tmp_path / "digits.npz", "--json", "--output", tmp_path / "o.npz")
    assert r.returncode == 0, r.stderr
    preds = [p["index"] for p in json.loads(r.stdout)["predictions"]]
    with torch.inference_mode():
        ref = load_module()(torch.from_numpy(x[:50])).argmax(1).tolist()
    assert preds == ref
    assert np.load(tmp_path / "o.npz")["logits"].shape == (50, 10)
    np.save(tmp_path / "one.npy", x[:4])  # a single .npy works for one-input models
    assert run_cli("run", digits_bundle, "--input", tmp_path / "one.npy").returncode == 0


@pytest.mark.parametrize("array,words", [
    (np.zeros((1, 1, 8, 8), np.float64), "dtype float64"),
    (np.zeros((1, 8, 8), np.float32), "rank 3"),
])
def test_cli_input_mistakes_are_one_line(digits_bundle, tmp_path, array, words):
    np.savez(tmp_path / "bad.npz", x=array)
    r = run_cli("run", digits_bundle, "--input", tmp_path / "bad.npz")
    assert r.returncode == 1 and words in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    np.savez(tmp_path / "name.npz", image=np.zeros((1, 1, 8, 8), np.float32))
    r = run_cli("run", digits_bundle, "--input", tmp_path / "name.npz")
    assert r.returncode == 1 and "unknown input name 'image'" in r.stderr
    r = run_cli("run", digits_bundle, "--input", tmp_path / "name.npz", "--debug")
    assert "Traceback" in r.stderr


def test_bench_reports_overhead(digits_bundle):
    r = run_cli("bench", digits_bundle, "--iters", "50", "--warmup", "5", "--json", "--no-torch")
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)["artifacts"][0]
    for k in ("p50_ms", "p90_ms", "p99_ms", "throughput_per_s"):
        assert row["session"][k] > 0 and row["raw"][k] > 0
    assert {"overhead_us", "overhead_pct", "overhead_budget_us", "overhead_ok"} <= set(row)


def test_validate_catches_a_numerically_wrong_artifact(bundle_copy):
    """`edgekit validate` re-runs the artifact: a consistent manifest with wrong weights still fails."""
    import hashlib

    import onnx
    from onnx import numpy_helper

    p = bundle_copy / "main.onnx"
    m = onnx.load(str(p))
    init = max(m.graph.initializer, key=lambda t: np.prod(t.dims))
    w = numpy_helper.to_array(init).copy()
    init.CopyFrom(numpy_helper.from_array(w * 1.5, init.name))
    onnx.save(m, str(p))
    man = json.loads((bundle_copy / "manifest.json").read_text())
    man["artifacts"][0]["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()  # checksums agree
    (bundle_copy / "manifest.json").write_text(json.dumps(man))
    r = run_cli("validate", bundle_copy, "--json")
    assert r.returncode == 1 and "failed validation" in r.stderr
    assert json.loads(r.stdout)["artifacts"][0]["result"] == "FAIL"


def test_bench_batch_option(digits_bundle):
    r = run_cli("bench", digits_bundle, "--batch", "7", "--iters", "10", "--warmup", "2", "--json", "--no-torch")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["artifacts"][0]["batch"] == 7
