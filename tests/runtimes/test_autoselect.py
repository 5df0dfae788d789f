"""backend="auto": measured on the first load and cached per machine and bundle, fixed order on request;
a failed artifact that load runs around is named in a warning; bench/info/eval show it (torch-free)."""
from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
from edgekit.runtimes.registry import SubstitutionWarning

import edgekit
from edgekit.core.errors import BundleError, UsageError
from edgekit.models.digits import heldout
from tests.conftest import run_cli


def _edit(root, fn):
    p = root / "manifest.json"
    m = json.loads(p.read_text())
    fn(m)
    p.write_text(json.dumps(m))


@pytest.fixture()
def two_candidates(digits_bundle, tmp_path, monkeypatch):
    """The default bundle with its ONNX file listed twice (fp32 and fp16): two validated candidates."""
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / digits_bundle.name
    shutil.copytree(digits_bundle, root)

    def add(m):
        twin = json.loads(json.dumps(m["artifacts"][0]))
        twin["precision"] = "fp16"
        m["artifacts"].append(twin)
    _edit(root, add)
    return root


def test_auto_measures_once_then_uses_the_cache(two_candidates, tmp_path):
    s = edgekit.load(two_candidates)
    c = s.choice
    assert c["how"] == "measured" and c["picked"].startswith("onnxruntime:onnx/")
    rows = [r for r in c["table"] if "p50_us" in r]
    assert len(rows) == 2 and min(r["vs_best"] for r in rows) == 1.0 and all(r["calls"] >= 9 for r in rows)
    assert c["cache"].startswith(str(tmp_path / "cache" / "auto"))
    again = edgekit.load(two_candidates)
    assert again.choice["how"] == "cached" and again.choice["picked"] == c["picked"]
    x, _ = heldout()
    assert again.run({"x": x[:2]})["logits"].shape == (2, 10)


def test_auto_order_mode_and_bad_mode(two_candidates, monkeypatch):
    monkeypatch.setenv("EDGEKIT_AUTO", "order")
    c = edgekit.load(two_candidates).choice
    assert c["how"] == "order" and c["picked"] == "onnxruntime:onnx/fp32" and "EDGEKIT_AUTO=order" in c["why"]
    monkeypatch.setenv("EDGEKIT_AUTO", "fastest")
    with pytest.raises(UsageError, match="EDGEKIT_AUTO='fastest' is not a mode"):
        edgekit.load(two_candidates)


def test_a_failed_artifact_is_never_substituted_quietly(bundle_copy):
    def add_failed(m):
        m["artifacts"].append({"target": "openvino", "graph": "main", "precision": "int8", "path": "main.int8.openvino",
                               "status": "failed", "status_reason": "validation failed: top-1 agreement 0.41 < 0.9"})
    _edit(bundle_copy, add_failed)
    for backend in ("openvino", "auto"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            s = edgekit.load(bundle_copy, backend=backend)
        msgs = [str(w.message) for w in caught if w.category is SubstitutionWarning]
        assert len(msgs) == 1 and "openvino/int8 failed at export (validation failed: top-1 agreement 0.41" in msgs[0]
        assert "running onnx/fp32 on" in msgs[0] and s.choice["warning"] == msgs[0]
    with pytest.raises(BundleError, match=r"openvino/int8 in .* is failed: validation failed: top-1 agreement 0.41"):
        edgekit.load(bundle_copy, backend="openvino", precision="int8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the ONNX Runtime artifact was not exported for int8: nothing to say
        edgekit.load(bundle_copy, backend="onnxruntime")


def test_cli_bench_info_and_eval(two_candidates, tmp_path):
    env = {"EDGEKIT_CACHE": str(tmp_path / "cache")}
    r = run_cli("bench", two_candidates, "--iters", "20", "--warmup", "2", "--no-torch", "--plot", tmp_path / "b.png",
                "--json", env=env)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert {a["precision"] for a in d["artifacts"]} == {"fp32", "fp16"} and (tmp_path / "b.png").stat().st_size > 1000
    assert min(a["vs_fastest"] for a in d["artifacts"]) == 1.0 and d["auto"]["main"]["how"] == "measured"
    r = run_cli("info", two_candidates, env=env)
    assert r.returncode == 0 and "auto: onnxruntime:onnx/" in r.stdout and "(cached:" in r.stdout
    assert "err/tol" in r.stdout  # the validation column shows the judged numbers
    x, y = heldout()
    np.savez(tmp_path / "labeled.npz", x=x[:64], labels=y[:64])
    r = run_cli("eval", two_candidates, "--data", tmp_path / "labeled.npz", "--json", env=env)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["samples"] == 64 and "fp32 artifact" in d["reference"]
    for a in d["artifacts"]:
        assert a["accuracy"] > 0.9 and a["top1_agreement"] == 1.0
    r = run_cli("eval", two_candidates, "--data", tmp_path / "nope.npz", env=env)
    assert r.returncode == 1 and "eval data" in r.stderr and "does not exist" in r.stderr


def test_eval_of_an_image_directory_without_torch(digits_bundle, tmp_path, no_torch_env):
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for i in range(-60, 0):  # 8x8 grey PNGs in one folder per label, preprocessed by the bundle's metadata
        (tmp_path / "imgs" / str(d.target[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray((d.images[i] * 255 / 16).round().astype(np.uint8)).save(tmp_path / "imgs" / str(d.target[i]) / f"{i}.png")
    r = run_cli("eval", digits_bundle, "--data", tmp_path / "imgs", "--json", env=no_torch_env)
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)["artifacts"]
    assert row["accuracy"] > 0.9 and row["top1_agreement"] == 1.0
