"""Batch-1 token-gated encoder as ONE graph with data-dependent gathers.

input_ids [1, T] -> (logits [1, C], kept1 .. kept{L-1}): ``kept{l}`` [n_l] int64 = the original
positions of the tokens entering gated layer l (ascending), so the kept tokens of every layer are
checkable against PyTorch.

Inside the graph, before each gated layer: TopK over the attention-received scores (equal values
-> lower index first, as ``rank_tokens``) -> rank -> relative-rank bin -> learned gate -> NonZero
-> Gather, so the next layer really runs on fewer tokens, with no session boundary in between.
The last layer computes only the [CLS] query row (exact). A batch needs per-row counts and
re-padding, which the multi-graph pipeline does; this graph is the bundle's batch-1 fast path
(graph ``single``), chosen by measured latency (see docs/token_gating.md).

Exported with the TorchScript exporter: torch.export cannot trace the data-dependent sequence
length without unbacked-symbol guards.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekit.tokengate.model import TokenGatedBert, layer_forward


class OneGraphGated(nn.Module):
    """input_ids [1, T] -> (logits [1, C], kept{l} [n_l] for every gated layer l)."""

    def __init__(self, model: TokenGatedBert, rules: dict | None = None, max_len: int = 64):
        super().__init__()
        self.m = model.eval()
        rules = model.rules() if rules is None else rules
        self.layer_rules = {int(k): v for k, v in rules.items()}
        for k, r in self.layer_rules.items():
            if r["kind"] != "gates":
                raise ValueError("the one-graph variant only encodes learned gates")
            self.register_buffer(f"table{k}", keep_table(r["open"], max_len))
        cls_bias = torch.zeros(max_len)
        cls_bias[0] = 1e30                         # [CLS] sorts first (and is always kept)
        self.register_buffer("cls_bias", cls_bias)
        self.output_names = ["logits"] + [f"kept{k}" for k in sorted(self.layer_rules)]
        self.eval()  # the exporter restores the wrapper's mode recursively: keep it in eval

    def forward(self, input_ids: torch.Tensor):
        m = self.m
        h = m.embed(input_ids)
        pos = torch.cumsum(torch.ones_like(input_ids[0]), 0) - 1     # arange(T), trace-friendly
        kept = []
        score = None
        n_layers = len(m.layers)
        for i, layer in enumerate(m.layers):
            if i in self.layer_rules and score is not None:
                t = score.shape[1]
                s = score[0] + self.cls_bias[:t]
                order = torch.topk(s, t).indices            # ONNX TopK: equal values -> lower index first
                keep_sorted = getattr(self, f"table{i}")[t][:t]     # keep decision per sorted slot
                keep = torch.zeros_like(keep_sorted).scatter(0, order, keep_sorted)
                idx = torch.nonzero(keep).squeeze(1)        # kept positions, original order
                h = torch.index_select(h, 1, idx)
                pos = torch.index_select(pos, 0, idx)
                kept.append(pos)                            # original positions entering layer i
            h, score = layer_forward(layer, h, None, None, m.heads, cls_only=m.cls_last and i == n_layers - 1,
                                     batch1=True)
        return (m.head(h[:, 0]), *kept)


def keep_table(open_: list, max_len: int) -> torch.Tensor:
    """[max_len+1, max_len] bool: row t = keep decision for the t tokens sorted [CLS] first, then
    the body by significance: slot 0 ([CLS]) kept, body slot r of n = t-1 kept iff
    open_[floor(r * bins / n)] (the rule of ``select_keep``, precomputed for every length)."""
    o = np.asarray(open_, dtype=bool)
    tab = np.zeros((max_len + 1, max_len), dtype=bool)
    tab[1:, 0] = True
    for t in range(2, max_len + 1):
        n = t - 1
        tab[t, 1:t] = o[(np.arange(n) * o.size) // n]
    return torch.from_numpy(tab)


def export_b1(module: nn.Module, path: str | Path, ids: np.ndarray, output_names: list[str]) -> Path:
    """TorchScript-export a batch-1 text graph (input_ids [1, T] -> output_names; outputs after
    the first have a data-dependent length). One exporter setting for the gated one-graph and the
    ungated batch-1 reference, so their latencies compare like for like."""
    path = Path(path)
    with torch.no_grad():
        torch.onnx.export(module, (torch.from_numpy(ids),), str(path), input_names=["input_ids"],
                          output_names=output_names,
                          dynamic_axes={"input_ids": {1: "seq"}, **{k: {0: f"n_{k}"} for k in output_names[1:]}},
                          opset_version=18, dynamo=False)
    return path


def export_onegraph(model: TokenGatedBert, path: str | Path, rules: dict | None = None, max_len: int = 64) -> Path:
    g = OneGraphGated(model, rules, max_len)
    return export_b1(g, path, example_ids(model.embed.word.num_embeddings, b1_example_len(max_len)), g.output_names)


def b1_example_len(max_len: int) -> int:
    """Example length of the batch-1 graphs: validation also runs length + 1 and 2 x length
    (exporters/validate.make_cases), which must stay within max_len so the dynamic axis is checked."""
    return max(2, min(32, max_len // 2))


def example_ids(vocab: int, t: int = 32) -> np.ndarray:
    if vocab > 2000:
        return np.array([[101] + list(range(2000, 2000 + t - 2)) + [102]], dtype=np.int64)
    return np.array([[1] + [5 + (7 * i) % (vocab - 5) for i in range(t - 2)] + [2]], dtype=np.int64)
