"""Token gating (PyTorch side + shared numpy selection) on a tiny random BERT: fast."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from edgekit.tokengate.train import pad_batch, tiny_model, train, uniform_rules  # noqa: E402
from edgekit.runtimes.pipelines.tokengate import compact_order, select_keep  # noqa: E402


@pytest.fixture()
def model():
    torch.set_num_threads(1)
    return tiny_model(vocab=300).eval()


def batch(lengths, seed=0, vocab=300):
    rng = np.random.default_rng(seed)
    return pad_batch([[1] + rng.integers(5, vocab, size=n).tolist() + [2] for n in lengths])


def test_full_mode_matches_transformers(model):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    bert = BertModel(cfg).eval()
    from edgekit.tokengate.model import TokenGatedBert, layer_forward, NEG

    m = TokenGatedBert(bert, bins=4).eval()
    ids, mask = batch([3, 9, 0])
    ref = bert(input_ids=ids, attention_mask=mask).last_hidden_state
    with torch.no_grad():
        h = m.embed(ids)
        f = mask.float()
        for layer in m.layers:
            h, _ = layer_forward(layer, h, (1 - f) * NEG, f, m.heads)
    valid = mask.bool()
    assert torch.allclose(h[valid], ref[valid], atol=1e-5)


def test_hard_all_open_equals_full_and_batch_equals_single(model):
    ids, mask = batch([2, 7, 15, 0])
    with torch.no_grad():
        full = model(ids, mask, mode="full")["logits"]
        hard = model.run_hard(ids, mask, rules={})
        assert torch.allclose(full, hard["logits"], atol=1e-5)
        model.gate_logits.data[:, 3:] = -5.0          # keep the top 3/8 of tokens at each gate
        gated = model.run_hard(ids, mask)
        for b in range(4):
            n = int(mask[b].sum())
            one = model.run_hard(ids[b:b + 1, :n], mask[b:b + 1, :n])
            assert torch.allclose(one["logits"][0], gated["logits"][b], atol=1e-5)
            assert (one["tokens_per_layer"][0] == gated["tokens_per_layer"][b]).all()
    t = gated["tokens_per_layer"]
    assert (t[:, 0] == mask.sum(1).numpy()).all()       # layer 0 sees every real token
    assert (np.diff(t, axis=1) <= 0).all() and t[2, -1] < t[2, 0]   # sequences only shrink
    # physical removal: the last layer's kept positions are a subset, [CLS] always among them
    for b in range(4):
        assert gated["kept_positions"][-1][b][0] == 0


def test_soft_mode_with_binary_gates_equals_hard(model):
    model.gate_logits.data[:] = 30.0
    model.gate_logits.data[:, 4:] = -30.0
    ids, mask = batch([5, 12, 20])
    with torch.no_grad():
        soft = model(ids, mask, mode="soft")
        hard = model.run_hard(ids, mask)
    assert torch.allclose(soft["logits"], hard["logits"], atol=1e-4)
    assert np.allclose(soft["kept"].numpy(), hard["tokens_per_layer"], atol=1e-3)


def test_select_keep_cls_padding_and_rules():
    score = np.array([[0.0, 0.5, 0.1, 0.3, 0.9, 0.0], [0.9, 0.2, 0.8, 0.0, 0.0, 0.0]], dtype=np.float32)
    valid = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]], dtype=bool)
    keep = select_keep(score, valid, {"kind": "gates", "open": [True, True, False, False]})
    assert keep[0].tolist() == [True, True, False, False, True, False]   # top-2 of 4 body tokens + CLS
    assert keep[1].tolist() == [True, False, True, False, False, False]  # top-1 of 2; padding never kept
    none = select_keep(score, valid, {"kind": "gates", "open": [False] * 4})
    assert none[:, 0].all() and none.sum() == 2                          # [CLS] survives closed gates
    assert select_keep(score, valid, {"kind": "ratio", "ratio": 0.5}).sum(1).tolist() == [3, 2]
    assert select_keep(score, valid, {"kind": "first", "k": 1})[0].tolist() == [True, True] + [False] * 4
    thr = select_keep(score, valid, {"kind": "threshold", "threshold": 1.0})
    assert thr[0].tolist() == [True, True, False, True, True, False]     # score * 5 >= 1
    order = compact_order(keep)
    assert order.shape == (2, 3) and order[0].tolist() == [0, 1, 4]


def test_ties_break_by_position():
    score = np.zeros((1, 5), dtype=np.float32)
    keep = select_keep(score, np.ones((1, 5), bool), {"kind": "ratio", "ratio": 0.5})
    assert keep[0].tolist() == [True, True, True, False, False]


def test_knob_trains_gates_and_trades_tokens():
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    seqs = [[1] + rng.integers(5, 300, size=int(rng.integers(4, 20))).tolist() + [2] for _ in range(64)]
    y = np.array([s[1] % 2 for s in seqs])
    kept, hist = {}, {}
    for knob in (0.0, 5.0):
        m = tiny_model(vocab=300, seed=0)
        hist[knob] = train(m, seqs, y, knob=knob, epochs=6, batch=16, gate_lr=0.2, log=None)["history"]
        ids, mask = pad_batch(seqs)
        kept[knob] = m.run_hard(ids, mask)["tokens_per_layer"].sum()
    assert kept[5.0] < 0.8 * kept[0.0]                     # larger knob -> fewer tokens, hard inference
    assert hist[5.0][-1]["sparsity"] < hist[5.0][0]["sparsity"]
    assert "bimodal" in hist[5.0][-1]


def test_sparsity_terms_gates_and_flops(model):
    """'gates' = cost-weighted mean open probability per layer (the paper's L0 term): it prices a
    gate by its own layer only; 'flops' = expected cumulative FLOPs fraction, which also charges an
    early gate for every later layer, so closing the first gated layer saves relatively more there."""
    ids = torch.tensor([[1, 5, 6, 7, 8, 2]])
    mask = torch.ones_like(ids)
    c = model.layer_token_cost()
    wg = c[model.gated_layers]

    def reg(closed=None):
        with torch.no_grad():
            model.gate_logits.fill_(20.0)
            if closed is not None:
                model.gate_logits[closed] = -20.0
            r = model.regularizers(model(ids, mask, mode="soft")["kept"], mask)
        return float(r["sparsity_gates"]), float(r["sparsity_flops"])

    g0, f0 = reg()
    assert abs(g0 - 1) < 1e-4 and abs(f0 - 1) < 1e-4
    (g1, f1), (g2, f2) = reg(0), reg(len(wg) - 1)        # close the first / the last gated layer
    assert abs(g1 - (1 - wg[0] / wg.sum())) < 1e-4 and abs(g2 - (1 - wg[-1] / wg.sum())) < 1e-4
    assert (1 - f1) / (1 - f2) > (1 - g1) / (1 - g2)
    with pytest.raises(Exception, match="sparsity"):
        train(model, [[1, 2]], np.array([0]), knob=1.0, sparsity="tokens", log=None)


def test_topk_gates_equal_ratio_rule(model):
    """set_topk_gates encodes a fixed top-k schedule in the gates: same kept tokens as the 'ratio' rule."""
    from edgekit.tokengate.train import set_topk_gates
    ids, mask = batch([3, 9, 17, 30], seed=3)
    ratios = [r / model.bins for r in range(model.bins // 2, model.bins // 2 + len(model.gated_layers))]
    set_topk_gates(model, ratios)
    got = model.run_hard(ids, mask)
    ref = model.run_hard(ids, mask, rules={l: {"kind": "ratio", "ratio": r} for l, r in zip(model.gated_layers, ratios)})
    assert (got["tokens_per_layer"] == ref["tokens_per_layer"]).all()
    assert all((a == b).all() for a, b in zip(got["kept_positions"], ref["kept_positions"]))
    with pytest.raises(Exception, match="multiple of"):
        set_topk_gates(model, [0.3] * len(model.gated_layers))


def test_flops_and_baseline_rules(model):
    f = model.flops(np.array([[10, 10, 10], [10, 5, 5]]))
    assert f[1] < f[0]
    r = uniform_rules(model, "ratio", 0.5)
    assert set(r) == set(model.gated_layers) and r[1]["ratio"] == 0.5
    with pytest.raises(Exception):
        train(model, [[1, 2]], np.array([0]), knob=-1.0, log=None)


def test_frozen_gate_finetune_keeps_gates_and_trains_under_hard_removal():
    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    seqs = [[1] + rng.integers(5, 300, size=int(rng.integers(4, 20))).tolist() + [2] for _ in range(32)]
    y = np.array([s[1] % 2 for s in seqs])
    m = tiny_model(vocab=300, seed=0)
    m.gate_logits.data[:, 4:] = -5.0
    before = m.gate_logits.detach().clone()
    w0 = m.head.out.weight.detach().clone()
    train(m, seqs, y, knob=None, freeze_gates=True, epochs=2, batch=16, log=None)
    assert torch.equal(m.gate_logits, before) and not torch.equal(m.head.out.weight, w0)
    assert m.frozen_gates is False and not m.training


def test_distillation_and_frozen_phase_use_teacher_and_physical_removal():
    """KD adds KL to the teacher's logits; the frozen-gate phase runs hard_forward (tokens gathered
    out) with gradients reaching the encoder."""
    from edgekit.tokengate.train import teacher_logits

    torch.set_num_threads(1)
    rng = np.random.default_rng(2)
    seqs = [[1] + rng.integers(5, 300, size=int(rng.integers(4, 20))).tolist() + [2] for _ in range(32)]
    y = np.array([s[1] % 2 for s in seqs])
    m = tiny_model(vocab=300, seed=0)
    t = teacher_logits(m, seqs)
    ids, mask = pad_batch(seqs[:4])
    assert np.allclose(t[:4], m.run_hard(ids, mask, rules={})["logits"].numpy(), atol=1e-5)
    hist = train(m, seqs, y, knob=1.0, epochs=1, batch=16, teacher=t, log=None)["history"]
    assert "kd" in hist[-1] and hist[-1]["kd"] >= 0

    def trained_head(teacher):   # KD must change what gate training learns, not just be logged
        mm = tiny_model(vocab=300, seed=0)
        train(mm, seqs, y, knob=1.0, epochs=1, batch=16, teacher=teacher, kd_alpha=5.0, log=None)
        return mm.head.out.weight.detach().clone()
    assert not torch.allclose(trained_head(np.ascontiguousarray(t[:, ::-1])), trained_head(None))
    m.gate_logits.data[:, 4:] = -5.0
    m.train()
    out = m.hard_forward(ids, mask)
    out["logits"].sum().backward()
    assert m.layers[0].attention.self.query.weight.grad is not None
    assert (out["tokens_per_layer"][:, -1] < out["tokens_per_layer"][:, 0]).any()
    with pytest.raises(Exception):
        train(m, seqs, y, knob=1.0, teacher=t[:3], log=None)
