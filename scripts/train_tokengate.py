"""Fine-tune MiniLM-L6 on rotten tomatoes: the ungated model, then gated models per knob.

  python scripts/train_tokengate.py ungated [--epochs 1]            -> CACHE/ungated.pt
  python scripts/train_tokengate.py gated --knob 0.5 [--steps 120]  -> CACHE/gated_k0.5.pt
CACHE defaults to /tmp/edgekit_tokengate (EDGEKIT_TOKENGATE_CACHE). Each run prints and writes a
JSON summary (dev + test accuracy, tokens per layer, FLOPs) next to the checkpoint.
Runs on one thread (shared machine): OMP_NUM_THREADS=1, torch.set_num_threads(1).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CACHE = Path(os.environ.get("EDGEKIT_TOKENGATE_CACHE", "/tmp/edgekit_tokengate"))


def data(max_len: int):
    from edgekit.compress.token_gating_train import encode_all, minilm_path
    from edgekit.data.rotten_tomatoes import load_split
    tok = minilm_path() / "tokenizer.json"
    out = {}
    for split in ("train", "dev", "test"):
        texts, y = load_split(split)
        out[split] = (encode_all(texts, tok, max_len), y)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["ungated", "gated"])
    ap.add_argument("--knob", type=float, default=0.5)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=0, help="gated: optimisation steps (0 = --epochs)")
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--gate-lr", type=float, default=0.05)
    ap.add_argument("--bins", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-test", action="store_true")
    ap.add_argument("--hard-steps", type=int, default=0, help="gated: then N steps with gates frozen hard")
    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    from edgekit.compress import token_gating_train as T

    CACHE.mkdir(parents=True, exist_ok=True)
    d = data(a.max_len)
    model = T.load_minilm(bins=a.bins)
    xs, ys = d["train"]
    t0 = time.time()
    if a.what == "ungated":
        info = T.train(model, xs, ys, knob=None, epochs=a.epochs, lr=a.lr or 5e-5, seed=a.seed)
        ck = CACHE / "ungated.pt"
        rules = {}
    else:
        T.load_state(model, CACHE / "ungated.pt")
        epochs = a.steps * 32 / len(xs) if a.steps else a.epochs
        info = T.train(model, xs, ys, knob=a.knob, epochs=epochs, lr=a.lr or 2e-5, gate_lr=a.gate_lr,
                       seed=a.seed)
        if a.hard_steps:
            T.train(model, xs, ys, knob=None, freeze_gates=True, epochs=a.hard_steps * 32 / len(xs),
                    lr=a.lr or 2e-5, seed=a.seed + 1)
        ck = CACHE / f"gated_k{a.knob:g}.pt"
        rules = None
    res = {"what": a.what, "knob": a.knob if a.what == "gated" else None, "max_len": a.max_len,
           "train_seconds": time.time() - t0, "steps": info["steps"], "seed": a.seed,
           "hard_steps": a.hard_steps if a.what == "gated" else 0,
           "dev": T.evaluate(model, *d["dev"], rules=rules)}
    if a.eval_test:
        res["test"] = T.evaluate(model, *d["test"], rules=rules)
    if a.what == "gated":
        res["rules"] = {str(k): v for k, v in model.rules().items()}
    T.save_model(model, ck, meta={k: v for k, v in res.items() if k != "rules"})
    ck.with_suffix(".json").write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "rules"}, indent=1))
    return res


if __name__ == "__main__":
    main()
