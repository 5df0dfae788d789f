"""Bundles and inputs for the core-only CI stage, made in the full stage (needs torch).

    python .ci/make_bundles.py OUT_DIR

Writes into OUT_DIR: four bundles (the embedded default with ONNX + ExecuTorch artifacts, the
personalizable PPP bundle, the skip-path VOS bundle, a tiny text classifier carrying its
tokenizer), the inputs the core stage feeds them, and ``expected.json`` with PyTorch's answers
for those inputs, so the torch-free install is checked against the reference, not only for exit 0.
Uses the public API only.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np


def digits(out: Path) -> dict:
    import torch

    import edgekit
    from edgekit.models import registry
    from edgekit.models.digits import heldout, load_module

    targets = "onnx,executorch" if importlib.util.find_spec("executorch") else "onnx"
    edgekit.export(registry.get("digits-cnn"), targets=targets, out=out)
    x, _ = heldout()
    np.savez(out / "digits.npz", x=x[:50])
    with torch.inference_mode():
        preds = load_module()(torch.from_numpy(x[:50])).argmax(1).tolist()
    return {"digits": {"bundle": "digits-cnn.edgekit", "input": "digits.npz", "top1": preds,
                       "targets": targets.split(",")}}


def ppp(out: Path) -> dict:
    import edgekit
    from edgekit.models import registry

    edgekit.export(registry.get("ppp-fashion-gated"), targets="onnx", out=out)
    rng = np.random.default_rng(0)
    np.savez(out / "personal.npz", x=rng.random((24, 1, 28, 28)).astype(np.float32))
    return {"ppp": {"bundle": "ppp-fashion-gated.edgekit", "data": "personal.npz"}}


def vos(out: Path) -> dict:
    import torch

    from edgekit.vos.data import make_video
    from edgekit.vos.export import export_bundle
    from edgekit.vos.io import write_mask
    from edgekit.vos.model import torch_pipeline

    export_bundle(out, targets=("onnx",))
    frames, masks = make_video(200_003, frames=6, size=(128, 128))
    np.save(out / "clip.npy", frames)
    write_mask(out / "mask.png", masks[0])
    torch.set_num_threads(1)
    ref = torch_pipeline().run(frames, masks[0])
    return {"vos": {"bundle": "vos-skip.edgekit", "video": "clip.npy", "mask": "mask.png",
                    "frames": int(len(frames)), "reused": [bool(r) for r in ref.reused],
                    "foreground": [int(m.sum()) for m in ref.masks]}}


def text(out: Path) -> dict:
    import torch
    import transformers
    from tokenizers import ByteLevelBPETokenizer, processors

    import edgekit

    src = out / "hf-text"
    torch.manual_seed(0)
    cfg = transformers.RobertaConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, pad_token_id=1, max_position_embeddings=70,
                                     num_labels=2, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1},
                                     initializer_range=0.5)  # outputs that depend visibly on the text
    model = transformers.RobertaForSequenceClassification(cfg).eval()
    model.save_pretrained(src)
    tk = ByteLevelBPETokenizer()
    tk.train_from_iterator(["a fine film", "a dull plot", "the cast is great", "boring and flat"] * 5,
                           vocab_size=280, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    tk.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tk.save(str(src / "tokenizer.json"))
    from edgekit.models.resolve import resolve

    edgekit.export(resolve(str(src), [], []), targets="onnx", out=out, name="text")
    texts = ["a fine film", "the cast is great and a fine film"]
    enc = [tk.encode(t).ids for t in texts]
    ids = np.ones((len(texts), max(map(len, enc))), np.int64)
    mask = np.zeros_like(ids)
    for i, e in enumerate(enc):
        ids[i, :len(e)], mask[i, :len(e)] = e, 1
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    if np.abs(logits[0] - logits[1]).max() < 1e-2:
        raise SystemExit("make_bundles: the text model's outputs barely depend on the text; the check would be weak")
    return {"text": {"bundle": "text.edgekit", "texts": texts, "logits": logits.tolist()}}


def main(out: str) -> None:
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    expected: dict = {}
    for make in (digits, ppp, vos, text):
        print(f"make_bundles: {make.__name__}", flush=True)
        expected.update(make(root))
    (root / "expected.json").write_text(json.dumps(expected, indent=1))
    print(f"make_bundles: wrote {', '.join(sorted(expected))} into {root}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python .ci/make_bundles.py OUT_DIR")
    main(sys.argv[1])
