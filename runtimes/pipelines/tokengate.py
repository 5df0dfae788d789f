"""Torch-free runner for token-gated BERT bundles (pipeline kind ``token_gating``).

The bundle holds one graph per stage: ``embed`` (input_ids -> hidden), ``layer0`` ..
``layer{L-1}`` (hidden, mask -> hidden, score) and ``head`` (cls hidden -> logits). Between two
layer graphs this runner decides which tokens survive (mask matching: rank the surviving tokens by
the attention they received, map each rank to its learned per-position gate) and physically
gathers the kept tokens, so the next graph really runs on a shorter sequence. [CLS] (position 0)
is always kept; padding is never kept.

The selection functions here are the single implementation: the PyTorch hard-gated model in
``edgekit.tokengate.model`` calls them too, so both take the same decisions.
"""
from __future__ import annotations

import math
import threading
from typing import Any, Sequence

import numpy as np
from edgekit.runtimes.pipelines import PipelineBase
from edgekit.runtimes.pipelines.text import TextEncoder

from edgekit.core.errors import BundleError, InputError, MissingFileError


# ----------------------------------------------------------------------------- selection rules
def rank_tokens(score: np.ndarray, valid: np.ndarray, b: int) -> np.ndarray:
    """Positions (excluding [CLS] at 0) of the valid tokens of row b, most significant first.
    Ties break by position, so every implementation agrees."""
    idx = np.nonzero(valid[b])[0]
    idx = idx[idx != 0]
    return idx[np.lexsort((idx, -score[b, idx].astype(np.float64)))]


def select_keep(score: np.ndarray, valid: np.ndarray, rule: dict) -> np.ndarray:
    """Keep mask [B, T] (bool) for one gate, given the significance ``score`` [B, T] and the
    currently valid tokens ``valid`` [B, T]. ``rule`` is one of
    {"kind": "gates", "open": [bool]*bins}  - learned per-position gates over relative rank bins
    {"kind": "ratio", "ratio": r}           - keep the ceil(r*n) most significant tokens (top-k)
    {"kind": "threshold", "threshold": t}   - keep tokens whose score * n_current >= t (LTP-style)
    {"kind": "first", "k": k}               - keep the first k valid positions (static truncation)
    """
    valid = np.asarray(valid).astype(bool)
    keep = np.zeros_like(valid)
    keep[:, 0] = valid[:, 0]
    kind = rule["kind"]
    for b in range(valid.shape[0]):
        order = rank_tokens(score, valid, b)
        n = order.size
        if n == 0:
            continue
        if kind == "gates":
            open_ = np.asarray(rule["open"], dtype=bool)
            bins = (np.arange(n) * open_.size) // n
            keep[b, order[open_[bins]]] = True
        elif kind == "ratio":
            keep[b, order[: int(math.ceil(float(rule["ratio"]) * n - 1e-9))]] = True
        elif kind == "threshold":
            ncur = n + 1
            keep[b, order[score[b, order] * ncur >= float(rule["threshold"])]] = True
        elif kind == "first":
            keep[b, np.sort(order)[: int(rule["k"])]] = True
        else:
            raise BundleError(f"unknown token-gating rule {kind!r}", "upgrade edgekit")
    return keep


def compact_order(keep: np.ndarray) -> np.ndarray:
    """Gather indices [B, T'] that move kept tokens to the front (original order), T' = max kept."""
    t_new = max(int(keep.sum(1).max()), 1)
    return np.argsort(~keep, axis=1, kind="stable")[:, :t_new]


def gather_rows(x: np.ndarray, order: np.ndarray) -> np.ndarray:
    idx = order.reshape(order.shape + (1,) * (x.ndim - 2))
    return np.take_along_axis(x, idx, axis=1)


def layer_flops(n: int, hidden: int, inter: int) -> int:
    """Multiply-adds x2 of one BERT layer on n tokens (projections, attention, FFN)."""
    return 2 * (4 * n * hidden * hidden + 2 * n * n * hidden + 2 * n * hidden * inter)


def last_layer_cls_flops(n: int, hidden: int, inter: int) -> int:
    """The last layer when only [CLS] is read: K, V over n tokens; Q, attention, O, FFN for 1 row."""
    return 2 * (2 * n * hidden * hidden + 2 * hidden * hidden + 2 * n * hidden + 2 * hidden * inter)


# ----------------------------------------------------------------------------- pipeline
class TokenGatePipeline(PipelineBase):
    """Runs embed -> layer graphs with token dropping in between -> head.

    ``run({"input_ids", "attention_mask"})`` or ``run(["text", ...])`` (when the bundle carries
    tokenizer.json) returns {"logits" [B, C], "tokens_per_layer" [B, L] (int64)}.
    ``last_kept`` holds, after a run, the original positions kept at each layer input (per thread:
    the pipeline may be shared by threads, each sees its own last run).
    A single unpadded row runs through the bundle's one-graph ``single`` when it has one (faster at
    batch 1, see docs/token_gating.md); pass ``single=False`` to always use the layer pipeline.
    """

    kind = "token_gating"

    def __init__(self, bundle: Any, backend: str = "auto", precision: str | None = None,
                 rule_override: list[dict] | None = None, single: bool = True, **options: Any):
        self._local = threading.local()
        super().__init__(bundle, backend=backend, precision=precision, **options)
        p = self.params
        self.num_layers = int(p["num_layers"])
        self.rules: dict[int, dict] = {int(k): v for k, v in p.get("rules", {}).items()}
        if rule_override is not None:
            self.rules = {int(r["layer"]): r for r in rule_override}
        self.max_len = int(p.get("max_len", 512))
        self.labels = list(bundle.manifest.metadata.get("labels", []))
        # cls_last bundles: layer0..layer{L-2} + "last" (last layer, [CLS] row only, + head)
        self.cls_last = bool(p.get("cls_last", False))
        body = self.num_layers - 1 if self.cls_last else self.num_layers
        need = ["embed"] + [f"layer{i}" for i in range(body)] + (["last"] if self.cls_last else ["head"])
        missing = [g for g in need if g not in self.sessions]
        if missing:
            raise BundleError(f"token-gating bundle lacks graphs {missing}", "re-export the bundle")
        self._raw = {g: s.run_raw for g, s in self.sessions.items()}
        # batch-1 fast path: the whole gated encoder as one graph (data-dependent gathers inside)
        graph1 = p.get("single")
        self.single = graph1 if (single and graph1 and graph1 in self.sessions and rule_override is None) else None
        self.encoder = None
        tok = p.get("tokenizer")
        if tok:
            try:
                self.encoder = TextEncoder(bundle.file(tok), self.max_len, int(p.get("pad_id", 0)))
            except MissingFileError:
                self.encoder = None
        self.last_kept: list[np.ndarray] = []

    @property
    def last_kept(self) -> list[np.ndarray]:
        return getattr(self._local, "kept", [])

    @last_kept.setter
    def last_kept(self, kept: list[np.ndarray]) -> None:
        self._local.kept = kept

    def encode(self, texts: Sequence[str], truncate: bool = True) -> dict[str, np.ndarray]:
        if self.encoder is None:
            raise InputError("this bundle carries no tokenizer.json, so it cannot take raw text",
                             "feed input_ids and attention_mask, or re-export with the tokenizer")
        return self.encoder(texts, truncate=truncate)

    def _feeds(self, feeds: Any) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(feeds, (str, list, tuple)):
            feeds = self.encode(feeds)
        if not isinstance(feeds, dict) or "input_ids" not in feeds:
            raise InputError("token-gating input needs 'input_ids' (and 'attention_mask') or text",
                             "pass {'input_ids': int64 [B,T], 'attention_mask': [B,T]} or a list of strings")
        ids = np.asarray(feeds["input_ids"])
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or ids.shape[1] == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise InputError(f"input_ids must be a non-empty integer [B, T] array, got {ids.dtype} {ids.shape}",
                             "tokenize first, or pass text")
        mask = np.asarray(feeds.get("attention_mask", np.ones_like(ids))).reshape(ids.shape)
        if ids.shape[1] > self.max_len:
            raise InputError(f"sequence length {ids.shape[1]} exceeds max_len {self.max_len}",
                             "truncate the input or pass text (truncated automatically)")
        if not np.all(mask[:, 0] == 1):
            raise InputError("position 0 ([CLS]) must be a real token in every row", "left-align the batch")
        return ids.astype(np.int64), mask.astype(bool)

    def run(self, feeds: Any) -> dict[str, np.ndarray]:
        ids, valid = self._feeds(feeds)
        if self.single is not None and ids.shape[0] == 1:
            n = int(valid[0].sum())
            if n >= 2 and valid[0, :n].all():       # one row, padding (if any) only at the end
                return self._run_single(ids[:, :n])
        return self._run_pipeline(ids, valid)

    def _run_single(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        out = self._raw[self.single]({"input_ids": ids})
        kept = [np.arange(ids.shape[1], dtype=np.int64)]      # layer 0 sees every token
        for i in range(1, self.num_layers):
            kept.append(np.asarray(out[f"kept{i}"], dtype=np.int64).reshape(-1) if f"kept{i}" in out else kept[-1])
        self.last_kept = [k[None] for k in kept]
        counts = np.array([[k.size for k in kept]], dtype=np.int64)
        return {"logits": out["logits"], "tokens_per_layer": counts}

    def _run_pipeline(self, ids: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
        raw = self._raw
        h = raw["embed"]({"input_ids": ids})["hidden"]
        pos = np.broadcast_to(np.arange(ids.shape[1]), ids.shape).copy()
        counts = np.zeros((ids.shape[0], self.num_layers), dtype=np.int64)
        self.last_kept = []
        score = None
        for i in range(self.num_layers):
            rule = self.rules.get(i)
            if rule is not None and score is not None:
                keep = select_keep(score, valid, rule)
                order = compact_order(keep)
                h = np.ascontiguousarray(gather_rows(h, order))
                valid = gather_rows(keep, order)
                pos = gather_rows(pos, order)
            counts[:, i] = valid.sum(1)
            self.last_kept.append(np.where(valid, pos, -1))
            if self.cls_last and i == self.num_layers - 1:
                return {"logits": raw["last"]({"hidden": h, "mask": valid.astype(np.int64)})["logits"],
                        "tokens_per_layer": counts}
            out = raw[f"layer{i}"]({"hidden": h, "mask": valid.astype(np.int64)})
            h, score = out["hidden_out"], out["score"]
        logits = raw["head"]({"cls": np.ascontiguousarray(h[:, 0])})["logits"]
        return {"logits": logits, "tokens_per_layer": counts}

    def run_text(self, texts: Sequence[str], truncate: bool = True) -> dict[str, np.ndarray]:
        """Raw text in (tokenized with the bundle's tokenizer.json), outputs as ``run``."""
        return self.run(self.encode(texts, truncate=truncate))

    def classify(self, texts: Sequence[str]) -> list[dict]:
        out = self.run(self.encode(texts))
        z = out["logits"] - out["logits"].max(1, keepdims=True)
        prob = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        names = self.labels or [str(i) for i in range(prob.shape[1])]
        return [{"label": names[int(p.argmax())], "prob": float(p.max()),
                 "tokens_per_layer": out["tokens_per_layer"][i].tolist()} for i, p in enumerate(prob)]
