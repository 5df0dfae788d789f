"""Token gating beyond MiniLM: other BERT-family architectures and the user's own labelled text.

Tiny random transformers models (RoBERTa with a byte-level BPE tokenizer.json, DistilBERT with
only a WordPiece vocab.txt, ELECTRA with an embedding projection, ...) saved as local model
directories, a small CSV / JSONL dataset, and the CLI path a user takes: train -> export -> run.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from edgekit.tokengate.model import TokenGatedBert  # noqa: E402
from edgekit.core.errors import DataError, UsageError  # noqa: E402
from tests.conftest import run_cli  # noqa: E402

WORDS_POS = ["great", "fine", "superb", "lovely", "moving", "sharp"]
WORDS_NEG = ["dull", "flat", "boring", "weak", "messy", "tired"]
FILL = ["the", "film", "plot", "a", "cast", "story", "is", "and", "with", "of", "this", "very"]
SMALL = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64)


def _config(mt: str, vocab: int, **extra):
    from transformers import AutoConfig
    kw = dict(SMALL, vocab_size=vocab, max_position_embeddings=80)
    if mt == "distilbert":
        kw = dict(dim=32, n_layers=3, n_heads=4, hidden_dim=64, vocab_size=vocab, max_position_embeddings=80)
    return AutoConfig.for_model(mt, **kw, **extra)


@pytest.mark.parametrize("mt,extra", [("bert", {}), ("roberta", {"pad_token_id": 1}), ("xlm-roberta", {"pad_token_id": 1}),
                                      ("electra", {"embedding_size": 16}), ("distilbert", {}), ("ernie", {})])
def test_families_match_transformers_and_survive_a_checkpoint(mt, extra, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from edgekit.tokengate.train import load_model, pad_batch, save_model
    torch.manual_seed(0)
    src = AutoModelForSequenceClassification.from_config(_config(mt, 120, num_labels=3, **extra)).eval()
    m = TokenGatedBert(src, num_labels=3, bins=4)
    err = m.check_against(src)   # hidden states and the copied classifier head
    assert err["hidden"] < 1e-5 and err["logits"] < 1e-5, err
    m.eval(), src.eval()
    ids, mask = pad_batch([[5, 9, 17, 33, 8, 40, 61], [5, 12, 7]], pad_id=m.pad_id)
    with torch.no_grad():
        ref = src(input_ids=ids, attention_mask=mask).logits
        assert torch.allclose(m(ids, mask, mode="full")["logits"], ref, atol=1e-5)
        assert torch.allclose(m.run_hard(ids, mask, rules={})["logits"], ref, atol=1e-5)
        m.gate_logits.fill_(-5.0)
        m.gate_logits[:, :2] = 5.0           # keep the top half of 4 bins before every gated layer
        want = m.run_hard(ids, mask)["logits"]
    save_model(m, tmp_path / "g.pt")
    m2, _ = load_model(tmp_path / "g.pt")
    with torch.no_grad():
        got = m2.run_hard(ids, mask)
    assert torch.allclose(got["logits"], want, atol=1e-6)
    assert got["tokens_per_layer"][0].tolist() == [7, 4, 3]   # [CLS] + ranks in the open bins


@pytest.mark.parametrize("mt", ["mpnet", "deberta-v2", "albert"])
def test_other_architectures_are_refused_clearly(mt):
    from transformers import AutoModel

    src = AutoModel.from_config(_config(mt, 120))
    with pytest.raises(UsageError, match="BERT-layout"):
        TokenGatedBert(src)


# ----------------------------------------------------------------------------- user data
def _rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        pos = i % 2 == 0
        words = list(rng.choice(FILL, size=int(rng.integers(4, 14)))) + \
            list(rng.choice(WORDS_POS if pos else WORDS_NEG, size=2))
        rng.shuffle(words)
        out.append({"review": " ".join(words), "sentiment": "pos" if pos else "neg"})
    return out


def _write_csv(path: Path, rows: list[dict]) -> Path:
    import csv
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def test_text_files_formats_split_and_errors(tmp_path):
    from edgekit.tokengate.text_files import load_text_dataset

    rows = _rows(100)
    csv_p = _write_csv(tmp_path / "d.csv", rows)
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "d.tsv").write_text("review\tsentiment\n" + "\n".join(f"{r['review']}\t{r['sentiment']}" for r in rows))
    for p in ("d.csv", "d.jsonl", "d.tsv"):
        ds = load_text_dataset(tmp_path / p)
        assert ds["labels"] == ["neg", "pos"]
        assert ds["source"]["sizes"] == {"train": 80, "dev": 10, "test": 10}
        for s in ("train", "dev", "test"):   # stratified: both classes in every split
            assert set(ds[s][1].tolist()) == {0, 1}
        all_texts = ds["train"][0] + ds["dev"][0] + ds["test"][0]
        assert sorted(all_texts) == sorted(r["review"] for r in rows)
    assert load_text_dataset(csv_p, label_order=["pos", "neg"])["labels"] == ["pos", "neg"]
    _write_csv(tmp_path / "one.csv", [{"text": "a", "label": "x"}] * 5)
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 1}\n{oops\n')
    _write_csv(tmp_path / "nocol.csv", [{"body": "a", "y": 1}])
    _write_csv(tmp_path / "empty_text.csv", [{"text": "a", "label": 1}, {"text": " ", "label": 0}])
    for name, msg in [("one.csv", "single label"), ("bad.jsonl", "bad.jsonl:2"), ("nocol.csv", "--text-column"),
                      ("empty_text.csv", "row 2"), ("missing.csv", "not found"), ("d.csv.bz2", "unsupported")]:
        if name == "d.csv.bz2":
            (tmp_path / name).write_bytes(b"x")
        with pytest.raises(DataError, match=msg):
            load_text_dataset(tmp_path / name)


def _roberta_dir(root: Path, texts: list[str]) -> Path:
    """A tiny random RobertaForSequenceClassification + a byte-level BPE tokenizer.json."""
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import RobertaForSequenceClassification

    tk = ByteLevelBPETokenizer()
    tk.train_from_iterator(texts, vocab_size=300, min_frequency=1,
                           special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tk.post_processor = processors.RobertaProcessing(("</s>", tk.token_to_id("</s>")), ("<s>", tk.token_to_id("<s>")))
    d = root / "tiny-roberta"
    d.mkdir()
    tk.save(str(d / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = _config("roberta", tk.get_vocab_size(), pad_token_id=1, bos_token_id=0, eos_token_id=2)
    RobertaForSequenceClassification(cfg).save_pretrained(d)
    return d


def _distilbert_dir(root: Path) -> Path:
    """A tiny random DistilBertModel with only a WordPiece vocab.txt (no tokenizer.json)."""
    from transformers import DistilBertModel

    d = root / "tiny-distilbert"
    d.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS_POS + WORDS_NEG + FILL)) + \
        list("abcdefghijklmnopqrstuvwxyz")
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    DistilBertModel(_config("distilbert", len(vocab))).save_pretrained(d)
    (d / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "tokenizer_class": "DistilBertTokenizer"}))
    return d


def test_tokenizer_json_from_vocab_txt_and_bad_model_dirs(tmp_path):
    from tokenizers import Tokenizer

    from edgekit.tokengate.train import load_pretrained, tokenizer_json_for
    d = _distilbert_dir(tmp_path)
    tk = Tokenizer.from_str(tokenizer_json_for(d))
    ids = tk.encode("the film is great").ids
    assert ids[0] == tk.token_to_id("[CLS]") and ids[-1] == tk.token_to_id("[SEP]") and len(ids) == 6
    with pytest.raises(UsageError, match="config.json"):
        load_pretrained(str(tmp_path), 2)
    m, info = load_pretrained(str(d), 2, label_names=["neg", "pos"])
    assert m.family == "distilbert" and not info["finetuned"] and info["check"]["hidden"] < 1e-5
    # an already fine-tuned classifier keeps its own label numbering (and skips the ungated phase)
    from transformers import DistilBertForSequenceClassification
    cfg = _config("distilbert", 60, id2label={0: "pos", 1: "neg"}, label2id={"pos": 0, "neg": 1})
    DistilBertForSequenceClassification(cfg).save_pretrained(tmp_path / "clf")
    m, info = load_pretrained(str(tmp_path / "clf"), 2, label_names=["neg", "pos"])
    assert info["finetuned"] and info["label_order"] == ["pos", "neg"] and info["check"]["logits"] < 1e-5
    assert m.head.act == "relu"


def test_cli_train_export_run_roberta_on_a_csv(tmp_path):
    """The path a user with their own model and data takes, end to end, with real processes."""
    rows = _rows(160)
    data = _write_csv(tmp_path / "reviews.csv", rows)
    model_dir = _roberta_dir(tmp_path, [r["review"] for r in rows])
    ck = tmp_path / "rob.pt"
    env = {"EDGEKIT_TOKENGATE_CACHE": str(tmp_path / "cache")}
    r = run_cli("tokengate", "train", "--model", model_dir, "--data", data, "--knob", "2", "--steps", "30",
                "--hard-steps", "10", "--ungated-epochs", "8", "--ungated-lr", "2e-3", "--out", ck, "--json", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(r.stdout)
    assert d["labels"] == ["neg", "pos"] and d["model_type"] == "roberta"
    assert d["data"]["sizes"] == {"train": 128, "dev": 16, "test": 16}
    assert d["ungated_dev"]["accuracy"] >= 0.75, d["ungated_dev"]   # the synthetic task is learnable
    assert 0 <= d["test"]["accuracy"] <= 1 and d["dev"]["flops"] <= d["ungated_dev"]["flops"]
    assert list((tmp_path / "cache").glob("ungated_*.pt"))          # the ungated start is cached
    r = run_cli("export", ck, "--target", "onnx,openvino", "--out", tmp_path, "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    bundle = json.loads(r.stdout)["bundle"]
    man = json.loads((Path(bundle) / "manifest.json").read_text())
    assert man["pipeline"]["params"]["pad_id"] == 1 and man["metadata"]["labels"] == ["neg", "pos"]

    import edgekit
    from edgekit.tokengate.train import load_model, pad_batch
    model, _ = load_model(ck)
    texts = [rows[0]["review"], rows[1]["review"] + " " + rows[3]["review"], "great"]
    p = edgekit.load(bundle, backend="onnxruntime")
    enc = p.encode(texts)
    seqs = [row[mk.astype(bool)].tolist() for row, mk in zip(enc["input_ids"], enc["attention_mask"])]
    assert all(s[0] == 0 and s[-1] == 2 for s in seqs)                # <s> ... </s>
    ids, mask = pad_batch(seqs, pad_id=1)
    with torch.no_grad():
        want = model.run_hard(ids, mask)
    for backend in ("onnxruntime", "openvino"):
        got = edgekit.load(bundle, backend=backend).run_text(texts)
        assert np.abs(got["logits"] - want["logits"].numpy()).max() < 1e-4
        assert (got["tokens_per_layer"] == want["tokens_per_layer"]).all()
    r = run_cli("tokengate", "run", bundle, "--text", texts[0], "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["results"][0]["label"] in ("neg", "pos")
    # bad input: one clear error, exit 1, nothing written
    bad = tmp_path / "bad.pt"
    r = run_cli("tokengate", "train", "--model", model_dir, "--data", tmp_path / "nope.csv", "--knob", "1",
                "--out", bad, env=env)
    assert r.returncode == 1 and "not found" in r.stderr and not bad.exists()
    r = run_cli("tokengate", "train", "--model", tmp_path / "cache", "--data", data, "--knob", "1", "--out", bad, env=env)
    assert r.returncode == 1 and "config.json" in r.stderr and not bad.exists()
