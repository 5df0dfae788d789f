"""`edgekit export DIR` for a local transformers model directory (save_pretrained), as a user
coming from Optimum would type it: text classifier with its tokenizer, an image classifier."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import edgekit  # noqa: E402
from tests.conftest import run_cli  # noqa: E402


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    cfg = transformers.RobertaConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, pad_token_id=1, max_position_embeddings=70,
                                     num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"},
                                     label2id={"neg": 0, "neu": 1, "pos": 2})
    transformers.RobertaForSequenceClassification(cfg).save_pretrained(root / "text")
    from tokenizers import ByteLevelBPETokenizer, processors
    tk = ByteLevelBPETokenizer()
    tk.train_from_iterator(["a fine film", "a dull plot", "the cast is great", "boring and flat"] * 5,
                           vocab_size=280, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    tk.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tk.save(str(root / "text" / "tokenizer.json"))
    vcfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64, num_labels=2)
    transformers.ViTForImageClassification(vcfg).save_pretrained(root / "image")
    (root / "empty").mkdir()
    return {"text": root / "text", "image": root / "image", "empty": root / "empty", "root": root}


def test_cli_exports_a_text_classifier_dir_with_labels_tokenizer_and_dynamic_axes(hf_dirs, tmp_path):
    r = run_cli("export", hf_dirs["text"], "-t", "onnx,openvino", "--no-bench", "--out", tmp_path, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(r.stdout)
    assert all(a["status"] == "ok" for a in d["artifacts"]), d["artifacts"]
    root = Path(d["bundle"])
    man = json.loads((root / "manifest.json").read_text())
    assert man["metadata"]["labels"] == ["neg", "neu", "pos"]
    assert man["metadata"]["hf_architecture"] == "RobertaForSequenceClassification"
    assert (root / "tokenizer.json").exists()                        # preprocessing travels with it
    assert [i["shape"] for i in man["inputs"]] == [["batch", "seq"], ["batch", "seq"]]
    model = transformers.RobertaForSequenceClassification.from_pretrained(hf_dirs["text"]).eval()
    rng = np.random.default_rng(3)
    ids = rng.integers(3, 300, (3, 23)).astype(np.int64)             # a size the example never had
    mask = np.ones_like(ids)
    mask[2, 9:] = 0
    ids[2, 9:] = 1
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    for backend in ("onnxruntime", "openvino"):
        got = edgekit.load(root, backend=backend).run({"input_ids": ids, "attention_mask": mask})["logits"]
        assert np.abs(got - ref).max() < 1e-4, backend
    # raw text in, with the carried tokenizer (torch-free runtime path)
    assert man["metadata"]["text"] == {"tokenizer": "tokenizer.json", "max_len": 68, "pad_id": 1}
    r = run_cli("run", root, "--text", "a fine film", "--text", "the cast is great and a fine film", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    from tokenizers import Tokenizer
    tk = Tokenizer.from_file(str(hf_dirs["text"] / "tokenizer.json"))
    enc = [tk.encode(t).ids for t in ("a fine film", "the cast is great and a fine film")]
    ids = np.ones((2, max(map(len, enc))), np.int64)
    mask = np.zeros_like(ids)
    for i, e in enumerate(enc):
        ids[i, :len(e)], mask[i, :len(e)] = e, 1
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    assert np.abs(np.array(out["outputs"]["logits"]["values"]) - ref).max() < 1e-4
    assert [p["label"] for p in out["predictions"]] == [["neg", "neu", "pos"][i] for i in ref.argmax(1)]


def test_api_exports_an_image_classifier_dir(hf_dirs, tmp_path):
    from edgekit.models.resolve import resolve

    src = resolve(str(hf_dirs["image"]))
    assert list(src.example_inputs) == ["pixel_values"] and src.example_inputs["pixel_values"].shape == (1, 3, 32, 32)
    b = edgekit.export(src, targets="onnx", out=tmp_path)
    assert all(a.status == "ok" for a in b.manifest.artifacts)
    assert b.manifest.metadata["labels"] == ["LABEL_0", "LABEL_1"]
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)   # dynamic batch
    model = transformers.ViTForImageClassification.from_pretrained(hf_dirs["image"]).eval()
    with torch.no_grad():
        ref = model(pixel_values=torch.from_numpy(x)).logits.numpy()
    assert np.abs(edgekit.load(b.root).run({"pixel_values": x})["logits"] - ref).max() < 1e-4


def test_bad_model_dirs_give_one_clear_error(hf_dirs, tmp_path):
    r = run_cli("export", hf_dirs["empty"], "-t", "onnx", "--no-bench", "--out", tmp_path)
    assert r.returncode == 1 and "without config.json" in r.stderr
    bad = hf_dirs["root"] / "broken"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')   # no weights
    r = run_cli("export", bad, "-t", "onnx", "--no-bench", "--out", tmp_path)
    assert r.returncode == 1 and "weights" in r.stderr and "Traceback" not in r.stderr
    assert not list(tmp_path.glob("*.edgekit"))
