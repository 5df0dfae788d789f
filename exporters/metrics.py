"""The numbers validation and evaluation judge by (numpy only, torch-free).

Class scores: top-1 agreement, the reference's top-1 inside the other side's top-5 (both over rows of
the last axis). Everything else: SQNR (signal-to-quantization-noise ratio, dB, over all values) and the
per-sample cosine similarity (each sample = one index of the batch axis, flattened).
"""
from __future__ import annotations

from typing import Any

import numpy as np

SQNR_CAP_DB = 300.0  # an exact match has infinite SQNR; manifests hold finite numbers
CLASSIFICATION_TASKS = ("classification", "image-classification", "text-classification", "audio-classification")
TASKS = ("auto", "classification", "embedding", "regression")


def normalize_task(task: Any) -> str:
    """A user's / manifest's task as one of TASKS (True = classification, for older callers)."""
    if task is True:
        return "classification"
    if not task:
        return "auto"
    t = str(task).lower()
    if t in CLASSIFICATION_TASKS or t.endswith("-classification"):
        return "classification"
    return t if t in TASKS else "auto"


def output_role(name: str, ref: np.ndarray, task: str) -> tuple[str, str]:
    """(role, why) of one output: "class-scores", "labels" (integer outputs) or "signal"."""
    a = np.asarray(ref)
    if a.dtype.kind in "iub":
        return "labels", f"{a.dtype.name} output: judged by exact agreement"
    if task == "classification" and a.ndim >= 2 and a.shape[-1] >= 2:
        return "class-scores", "task=classification (given)"
    if task == "auto" and a.ndim == 2 and a.shape[-1] >= 2:
        return "class-scores", (f"inferred: 2-D float output [batch, {a.shape[-1]}] read as class scores "
                                "(pass task='embedding' or 'regression' if it is not)")
    if task == "auto":
        return "signal", f"inferred: rank-{a.ndim} output is not [batch, classes]"
    if task == "embedding" and a.ndim >= 3:
        return "pooled", ("task=embedding (given): [batch, seq, ...] judged as the sentence embedding it pools to "
                          "(mean over the real tokens, as sentence-transformers does)")
    return "signal", f"task={task} (given)"


def padding_mask(case: dict[str, np.ndarray]) -> np.ndarray | None:
    """The [batch, seq] attention mask among a case's inputs (an integer/bool rank-2 input named *mask*)."""
    for name, a in case.items():
        if "mask" in name.lower() and np.asarray(a).ndim == 2 and np.asarray(a).dtype.kind in "iub":
            return np.asarray(a) != 0
    return None


def _rows(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    return a.reshape(-1, a.shape[-1]) if a.ndim >= 1 else a.reshape(1, 1)


def top1_agree(ref: np.ndarray, got: np.ndarray) -> tuple[int, int]:
    r, g = _rows(ref), _rows(got)
    return int((r.argmax(-1) == g.argmax(-1)).sum()), len(r)


def topk_contains(ref: np.ndarray, got: np.ndarray, k: int = 5) -> int:
    """Rows whose reference top-1 is among the other side's top-k scores."""
    r, g = _rows(ref), _rows(got)
    k = min(k, g.shape[-1])
    top = np.argpartition(-g, k - 1, axis=-1)[:, :k]
    return int((top == r.argmax(-1)[:, None]).any(-1).sum())


def sample_cosines(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Cosine similarity per sample (axis 0 for rank >= 2, the whole tensor otherwise)."""
    r, g = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    n = r.shape[0] if r.ndim >= 2 else 1
    r, g = r.reshape(n, -1), g.reshape(n, -1)
    nr, ng = np.linalg.norm(r, axis=1), np.linalg.norm(g, axis=1)
    dot = (r * g).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where((nr > 0) & (ng > 0), dot / (nr * ng), np.where((nr == 0) & (ng == 0), 1.0, 0.0))
    return np.clip(cos, -1.0, 1.0)


def sqnr_db(signal_power: float, noise_power: float) -> float:
    if noise_power <= 0:
        return SQNR_CAP_DB
    if signal_power <= 0:
        return -SQNR_CAP_DB
    return float(min(SQNR_CAP_DB, 10.0 * np.log10(signal_power / noise_power)))


class OutputStats:
    """Running metrics of one output over the judged cases (finite values only)."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.agree = self.top5 = self.rows = 0
        self.sig = self.noise = 0.0
        self.cos: list[float] = []
        self.masked = False

    def add(self, ref: np.ndarray, got: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Add one case. ``mask`` ([batch, seq], True = a real token): an output shaped [batch, seq, ...] is
        judged at the real tokens only -- what a model computes at its own padding is nobody's output."""
        r, g = np.asarray(ref, np.float64), np.asarray(got, np.float64)
        if r.size == 0:
            return
        if self.role == "pooled" and r.ndim >= 3:
            m = (mask if mask is not None and mask.shape == r.shape[:2] else np.ones(r.shape[:2], bool))[..., None]
            m = m.reshape(m.shape + (1,) * (r.ndim - 3)).astype(np.float64)
            self.masked = mask is not None
            den = np.maximum(m.sum(1), 1.0)
            r, g = (r * m).sum(1) / den, (g * m).sum(1) / den
        elif mask is not None and r.ndim >= 3 and r.shape[:2] == mask.shape and self.role != "labels":
            for i in range(r.shape[0]):
                if mask[i].any():
                    self.add(r[i:i + 1, mask[i]].reshape(1, -1), g[i:i + 1, mask[i]].reshape(1, -1))
            self.masked = True
            return
        if self.role == "labels":
            self.agree += int((r == g).sum())
            self.rows += int(r.size)
            return
        if self.role == "class-scores":
            a, n = top1_agree(r, g)
            self.agree, self.rows, self.top5 = self.agree + a, self.rows + n, self.top5 + topk_contains(r, g)
        ok = np.isfinite(r) & np.isfinite(g)
        self.sig += float((r[ok] ** 2).sum())
        self.noise += float(((r[ok] - g[ok]) ** 2).sum())
        self.cos.extend(sample_cosines(np.where(ok, r, 0.0), np.where(ok, g, 0.0)).tolist())

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.role in ("class-scores", "labels") and self.rows:
            out["top1_agreement"] = self.agree / self.rows
            out["rows"] = self.rows
        if self.role == "class-scores" and self.rows:
            out["top5_contains"] = self.top5 / self.rows
        if self.role != "labels" and self.cos:
            out["sqnr_db"] = sqnr_db(self.sig, self.noise)
            out["cos_min"] = float(min(self.cos))
            out["cos_mean"] = float(np.mean(self.cos))
            out["samples"] = len(self.cos)
        if self.masked:
            out["judged_at"] = ("the masked mean over the real tokens" if self.role == "pooled"
                                else "real tokens only (the attention mask's 1s)")
        return out
