"""The alternative export design, kept for the latency comparison: ONE graph with data-dependent
gathers (argsort -> rank -> gate lookup -> NonZero -> Gather) for batch 1.

The shipped design is the multi-graph pipeline (token_gating_export.py); the benchmark measures
both on ONNX Runtime. This variant handles batch 1 only (a batch would need per-row counts and
re-padding inside the graph) and is exported with the TorchScript exporter (torch.export cannot
trace the data-dependent sequence length without unbacked-symbol guards).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekit.compress.token_gating import TokenGatedBert, layer_forward


class OneGraphGated(nn.Module):
    """input_ids [1, T] -> (logits [1, C], tokens kept at the last layer [1])."""

    def __init__(self, model: TokenGatedBert, rules: dict | None = None):
        super().__init__()
        self.m = model.eval()
        rules = model.rules() if rules is None else rules
        self.layer_rules = {int(k): v for k, v in rules.items()}
        for k, r in self.layer_rules.items():
            if r["kind"] != "gates":
                raise ValueError("the one-graph variant only encodes learned gates")
            self.register_buffer(f"open{k}", torch.tensor(r["open"], dtype=torch.bool))
        self.eval()  # the exporter restores the wrapper's mode recursively: keep it in eval

    def forward(self, input_ids: torch.Tensor):
        m = self.m
        h = m.embed(input_ids)
        score = torch.zeros_like(h[..., 0])
        for i, layer in enumerate(m.layers):
            if i in self.layer_rules:
                open_ = getattr(self, f"open{i}")
                s = score[0, 1:]
                n = torch.ones_like(s).sum().clamp(min=1).long()
                order = torch.topk(s, s.shape[0]).indices   # ONNX TopK: equal values -> lower index first
                pos = torch.cumsum(torch.ones_like(order), 0) - 1
                rank = torch.zeros_like(order).scatter(0, order, pos)
                bins = torch.div(rank * open_.shape[0], n, rounding_mode="floor")
                keep = open_[bins]
                idx = torch.cat([torch.zeros(1, dtype=torch.long), torch.nonzero(keep)[:, 0] + 1])
                h = h[:, idx]
            ones = torch.ones_like(h[..., 0])
            h, score = layer_forward(layer, h, torch.zeros_like(ones), ones, m.heads)
        return m.head(h[:, 0]), ones.sum(1).long()


def export_onegraph(model: TokenGatedBert, path: str | Path) -> Path:
    path = Path(path)
    g = OneGraphGated(model)
    ids = torch.from_numpy(np.array([[101] + list(range(2000, 2030)) + [102]], dtype=np.int64))
    with torch.no_grad():
        torch.onnx.export(g, (ids,), str(path), input_names=["input_ids"], output_names=["logits", "kept"],
                          dynamic_axes={"input_ids": {1: "seq"}}, opset_version=18, dynamo=False)
    return path
