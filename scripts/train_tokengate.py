"""Fine-tune MiniLM-L6 on rotten tomatoes: the ungated model, then gated models per knob.

  python scripts/train_tokengate.py ungated [--epochs 1]            -> CACHE/ungated.pt
  python scripts/train_tokengate.py gated --knob 0.5 [--steps 120]  -> CACHE/gated_k0.5.pt
  python scripts/train_tokengate.py topk_ft --ratios 0.6875,0.625,0.625,0.625,1 --hard-steps 500 --kd 1
      -> CACHE/topk_ft.pt: a fixed (unlearned) top-k-by-attention schedule, one keep ratio per gated
         layer, given the same frozen-gate fine-tune as the gated models (fair-budget baseline)
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

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CACHE = Path(os.environ.get("EDGEKIT_TOKENGATE_CACHE", "/tmp/edgekit_tokengate"))


def data(max_len: int):
    from edgekit.tokengate.train import encode_all, minilm_path
    from edgekit.tokengate.rotten_tomatoes import load_split
    tok = minilm_path() / "tokenizer.json"
    out = {}
    for split in ("train", "dev", "test"):
        texts, y = load_split(split)
        out[split] = (encode_all(texts, tok, max_len), y)
    return out


def ungated_teacher(model, xs, max_len: int, base: str = "ungated.pt") -> np.ndarray:
    """Train-set logits of the ungated model (just loaded into ``model`` from CACHE/``base``): the
    distillation targets, computed once and cached in CACHE."""
    from edgekit.tokengate.train import teacher_logits
    tag = "" if base == "ungated.pt" else "_" + Path(base).stem
    tpath = CACHE / f"teacher_train_len{max_len}{tag}.npy"
    if tpath.exists():
        return np.load(tpath)
    teacher = teacher_logits(model, xs)
    np.save(tpath, teacher)
    return teacher


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["ungated", "gated", "ungated_more", "topk_ft"],
                    help="ungated_more: continue the ungated model for --steps steps with the gated runs' "
                         "optimiser settings and KD (a training-budget control) -> CACHE/ungated_more.pt")
    ap.add_argument("--knob", type=float, default=0.5)
    ap.add_argument("--ratios", default="0.6875,0.625,0.625,0.625,1",
                    help="topk_ft: keep ratio per gated layer (multiples of 1/bins; top-k by attention received)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=0, help="gated: optimisation steps (0 = --epochs)")
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--gate-lr", type=float, default=0.02)
    ap.add_argument("--bins", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-test", action="store_true")
    ap.add_argument("--hard-steps", type=int, default=0, help="gated: then N steps with gates frozen hard")
    ap.add_argument("--hard-lr", type=float, default=3e-5, help="gated: learning rate of the frozen-gate phase")
    ap.add_argument("--kd", type=float, default=0.0,
                    help="gated (frozen-gate phase) and ungated_more: distil from the ungated model, loss = CE + KD * T^2 * KL (0 = off)")
    ap.add_argument("--kd-temp", type=float, default=2.0)
    ap.add_argument("--bimodal", type=float, default=20.0,
                    help="gated: weight of the bi-modal term mean g(1-g), ramped in over the second half")
    ap.add_argument("--sparsity", choices=["gates", "flops"], default="gates",
                    help="gated: L0 term; gates = the paper's per-gate term, cost-weighted per layer (the "
                         "recipe); flops = expected FLOPs fraction (cumulative; the earlier recipe)")
    ap.add_argument("--tag", default="", help="gated: checkpoint name suffix")
    ap.add_argument("--base", default="ungated.pt",
                    help="gated / topk_ft: the ungated checkpoint in CACHE to start from and distil from "
                         "(e.g. ungated_more.pt, the longer-trained control)")
    ap.add_argument("--from-phase1", action="store_true",
                    help="gated: skip gate training, start from CACHE/phase1_k<knob>.pt (saved by an earlier run)")
    return ap


def train_gated(a, T, model, d) -> tuple[dict, Path, dict | None]:
    """Gate training (or its saved phase-1 result), then the frozen-gate phase: (info, checkpoint, phase-1 dev)."""
    xs, ys = d["train"]
    T.load_state(model, CACHE / a.base)
    teacher = ungated_teacher(model, xs, a.max_len, a.base) if a.kd else None
    epochs = a.steps * 32 / len(xs) if a.steps else a.epochs
    p1 = CACHE / f"phase1_k{a.knob:g}{a.tag}.pt"
    if a.from_phase1:
        T.load_state(model, p1)
        info = {"steps": T.load_model(p1)[1]["steps"]}
    else:
        info = T.train(model, xs, ys, knob=a.knob, epochs=epochs, lr=a.lr or 2e-5, gate_lr=a.gate_lr,
                       seed=a.seed, bimodal=a.bimodal, sparsity=a.sparsity)   # KD is used in the frozen-gate phase only
        T.save_model(model, p1, meta={"knob": a.knob, "steps": info["steps"], "phase": 1})
    phase1_dev = T.evaluate(model, *d["dev"]) if a.hard_steps else None
    if phase1_dev:
        print("after gate training (hard gates), dev:", round(phase1_dev["accuracy"], 4),
              [round(x, 1) for x in phase1_dev["tokens_per_layer"]], f"{phase1_dev['flops'] / 1e6:.0f} MFLOPs",
              flush=True)
    if a.hard_steps:
        T.train(model, xs, ys, knob=None, freeze_gates=True, epochs=a.hard_steps * 32 / len(xs),
                lr=a.hard_lr, seed=a.seed + 1, teacher=teacher, kd_alpha=a.kd, kd_temp=a.kd_temp)
    return info, CACHE / f"gated_k{a.knob:g}{a.tag}.pt", phase1_dev


def main(argv=None) -> dict:
    a = parser().parse_args(argv)
    import torch
    torch.set_num_threads(1)
    from edgekit.tokengate import train as T

    CACHE.mkdir(parents=True, exist_ok=True)
    d = data(a.max_len)
    model = T.load_minilm(bins=a.bins)
    xs, ys = d["train"]
    t0 = time.time()
    if a.what == "ungated":
        info = T.train(model, xs, ys, knob=None, epochs=a.epochs, lr=a.lr or 5e-5, seed=a.seed)
        ck = CACHE / "ungated.pt"
        rules = {}
    elif a.what == "ungated_more":
        T.load_state(model, CACHE / "ungated.pt")
        teacher = ungated_teacher(model, xs, a.max_len)
        info = T.train(model, xs, ys, knob=None, epochs=a.steps * 32 / len(xs), lr=a.hard_lr, seed=a.seed + 1,
                       teacher=teacher, kd_alpha=a.kd, kd_temp=a.kd_temp)
        ck = CACHE / "ungated_more.pt"
        rules = {}
    elif a.what == "topk_ft":
        T.load_state(model, CACHE / a.base)
        teacher = ungated_teacher(model, xs, a.max_len, a.base)
        T.set_topk_gates(model, [float(x) for x in a.ratios.split(",")])
        info = T.train(model, xs, ys, knob=None, freeze_gates=True, epochs=a.hard_steps * 32 / len(xs),
                       lr=a.hard_lr, seed=a.seed + 1, teacher=teacher, kd_alpha=a.kd, kd_temp=a.kd_temp)
        ck = CACHE / "topk_ft.pt"
        rules = None
    else:
        info, ck, phase1_dev = train_gated(a, T, model, d)
        rules = None
    res = {"what": a.what, "base": a.base if a.what in ("gated", "topk_ft") else None, "knob": a.knob if a.what == "gated" else None,
           "ratios": [float(x) for x in a.ratios.split(",")] if a.what == "topk_ft" else None, "max_len": a.max_len,
           "train_seconds": time.time() - t0, "steps": info["steps"], "seed": a.seed,
           "hard_steps": a.hard_steps if a.what in ("gated", "topk_ft") else 0, "kd": a.kd,
           "dev": T.evaluate(model, *d["dev"], rules=rules)}
    if a.what == "gated":
        res.update(kd=a.kd, kd_temp=a.kd_temp, bimodal=a.bimodal, hard_lr=a.hard_lr, gate_lr=a.gate_lr,
                   sparsity=a.sparsity,
                   recipe=f"{info['steps']} gate steps + {a.hard_steps} frozen-gate steps, KD {a.kd:g}, "
                          f"bimodal {a.bimodal:g}, sparsity {a.sparsity}",
                   phase1_dev=phase1_dev)
    if a.eval_test:
        res["test"] = T.evaluate(model, *d["test"], rules=rules)
    if a.what == "gated":
        res["rules"] = {str(k): v for k, v in model.rules().items()}
    from edgekit.tokengate.rotten_tomatoes import LABELS
    T.save_model(model, ck, meta={**{k: v for k, v in res.items() if k != "rules"}, "labels": LABELS})
    ck.with_suffix(".json").write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "rules"}, indent=1))
    return res


if __name__ == "__main__":
    main()
