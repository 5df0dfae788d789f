"""Dynamic token gating for BERT-family encoders (after arXiv:2102.09727).

Per gated encoder layer l (every layer but the first), a mask-matching module
  1. scores each surviving token's significance = attention it received in layer l-1
     (mean over heads and over surviving queries),
  2. sorts the surviving tokens (excluding [CLS]) by that score,
  3. matches the token at sorted position r (of n) to the learned gate of relative-rank bin
     floor(r * bins / n): g = sigmoid(theta_l[bin]).
A token's mask is the product of its gates so far (dropped once = dropped for good). During
training the mask enters attention as a log-bias on the keys (log m), which equals removing the
token when m is 0/1 - so soft training and hard inference compute the same function at 0/1 gates.
At inference the gates are hard (theta > 0) and closed tokens are gathered out of the hidden
states; the selection code is shared with the torch-free runtime (runtimes/tokengate_pipeline.py).

Gates are hard-concrete (Louizos et al. 2018, the L0 relaxation): in training each gate is sampled
per example, stretched and clipped, so most samples are exactly 0 or 1 and the network trains
under real token removal; g = P(gate open) is the differentiable gate value.
Loss = task CE + knob * sparsity                                 # L0-style (uses g)
              + bimodal * mean_g g (1 - g)                       # pushes gates to 0/1
sparsity "gates" (default, the measured recipe): the paper's per-gate L0 term, mean g with each
layer's gates weighted by that layer's own per-token cost; "flops": expected fraction of
token-proportional FLOPs computed (cumulative survival: a layer-1 gate is priced by every layer
after it; measured: it prunes almost only before layer 1, which costs more accuracy).
``knob`` is the ONE user-facing trade-off: how many loss units one would pay to run the whole
encoder on every token; larger knob -> fewer tokens -> fewer FLOPs, lower accuracy.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekit.core.errors import UsageError
from edgekit.runtimes.pipelines.tokengate import (
    compact_order,
    last_layer_cls_flops,
    layer_flops,
    select_keep,
)
from edgekit.tokengate.arch import SUPPORTED, Head, bert_parts

NEG = -1e9
HC_BETA, HC_GAMMA, HC_ZETA = 2.0 / 3.0, -0.1, 1.1     # hard-concrete temperature and stretch


def layer_forward(layer: nn.Module, h: torch.Tensor, key_bias: torch.Tensor | None, qmask: torch.Tensor | None,
                  heads: int, cls_only: bool = False, batch1: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One BertLayer on h [B,T,D] with additive key bias [B,T]; returns (hidden, score [B,T]).
    score[k] = attention received by key k, mean over heads and over queries weighted by qmask.
    ``cls_only``: only the [CLS] query row is computed (keys/values still over all T tokens);
    returns (hidden [B,1,D], None). Exact for the last layer, whose only consumer is the head.
    ``batch1``: one row without padding (key_bias and qmask must be None; score = plain mean over
    heads and queries); shapes are left to the graph (-1), so a traced export has no shape math
    (the bundle's batch-1 one-graph, token_gating_onegraph.py)."""
    sa, so = layer.attention.self, layer.attention.output
    if batch1 and (key_bias is not None or qmask is not None):
        raise ValueError("batch1=True takes no key bias or query mask")
    b = 1 if batch1 else h.shape[0]
    d = sa.query.out_features            # a Python constant, so tracing exporters see no shape math
    dh = d // heads

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(b, -1, heads, dh).transpose(1, 2)

    hq = h[:, :1] if cls_only else h
    q, k, v = split(sa.query(hq)), split(sa.key(h)), split(sa.value(h))
    att = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(dh)
    if key_bias is not None:
        att = att + key_bias[:, None, None, :]
    p = torch.softmax(att, dim=-1)
    ctx = torch.matmul(sa.dropout(p), v).transpose(1, 2).reshape(b, -1, d)
    a = so.LayerNorm(so.dropout(so.dense(ctx)) + hq)
    o = layer.output.LayerNorm(layer.output.dropout(layer.output.dense(layer.intermediate(a))) + a)
    if cls_only:
        return o, None
    if qmask is None:
        return o, p.mean(dim=(1, 2))
    w = qmask / qmask.sum(1, keepdim=True).clamp_min(1e-6)
    score = torch.einsum("bhqk,bq->bk", p, w) / heads
    return o, score


class LayerGraph(nn.Module):
    """Export unit: (hidden [B,T,D], mask [B,T] int64 0/1) -> (hidden_out, score)."""

    def __init__(self, layer: nn.Module, heads: int):
        super().__init__()
        self.layer, self.heads = layer, heads

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor):
        m = mask.to(hidden.dtype)
        return layer_forward(self.layer, hidden, (1.0 - m) * NEG, m, self.heads)


class LastHeadGraph(nn.Module):
    """Export unit for the last layer + head: (hidden [B,T,D], mask [B,T]) -> logits [B,C].
    Only the [CLS] query row of the last layer is computed (exact: the head reads only [CLS])."""

    def __init__(self, layer: nn.Module, head: nn.Module, heads: int):
        super().__init__()
        self.layer, self.head, self.heads = layer, head, heads

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor):
        m = mask.to(hidden.dtype)
        o, _ = layer_forward(self.layer, hidden, (1.0 - m) * NEG, m, self.heads, cls_only=True)
        return self.head(o[:, 0])


class TokenGatedBert(nn.Module):
    """A BERT encoder + classification head with per-layer trainable token gates.

    forward(input_ids, attention_mask, mode): mode "full" (ungated), "soft" (training / soft
    gates), "hard" (inference: tokens physically removed; see also run_hard for baselines)."""

    def __init__(self, bert: nn.Module, num_labels: int = 2, bins: int = 16,
                 gated_layers: list[int] | None = None, init_gate: float = 3.0):
        super().__init__()
        parts = bert_parts(bert)
        cfg = parts["config"]
        self.family = parts["family"]
        self.embed = parts["embed"]
        self.layers = parts["layers"]
        lay0 = self.layers[0]
        self.hidden = int(lay0.attention.self.query.out_features)
        self.inter = int(lay0.output.dense.in_features)
        self.heads = int(getattr(cfg, "num_attention_heads", 0) or getattr(cfg, "n_heads"))
        self.max_len = int(cfg.max_position_embeddings) - self.embed.pos_offset
        self.pad_id = int(getattr(cfg, "pad_token_id", 0) or 0)
        self.bert_config = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
        self.head = Head(self.hidden, num_labels, parts["head"])
        n = len(self.layers)
        self.gated_layers = list(gated_layers if gated_layers is not None else range(1, n))
        if any(g < 1 or g >= n for g in self.gated_layers):
            raise UsageError("gated layers must be in 1..num_layers-1 (layer 0 has no score yet)",
                             f"choose from 1..{n - 1}")
        self.bins = int(bins)
        self.gate_logits = nn.Parameter(torch.full((len(self.gated_layers), self.bins), float(init_gate)))
        self.frozen_gates = False   # True: train the encoder under the hard inference gates
        # the last layer computes only the [CLS] query row (exact; keys/values over all survivors).
        # A plain attribute, not in the checkpoint: set False to measure the plain-last-layer cost.
        self.cls_last = True

    # ------------------------------------------------------------------ gates
    def gate_values(self) -> torch.Tensor:
        """P(gate open) of the hard-concrete gates (the differentiable gate value g)."""
        return torch.sigmoid(self.gate_logits - HC_BETA * math.log(-HC_GAMMA / HC_ZETA))

    def gate_sample(self, shape: tuple) -> torch.Tensor:
        """Hard-concrete gates: sampled in training, deterministic in eval (0/1 at |theta| >> 0)."""
        a = self.gate_logits
        if self.training and not self.frozen_gates:
            u = torch.rand(shape + tuple(a.shape), device=a.device).clamp(1e-6, 1 - 1e-6)
            s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + a) / HC_BETA)
        else:  # eval: the hard gate of inference (open iff g = P(open) > 1/2)
            return (self.gate_values() > 0.5).float().expand(shape + tuple(a.shape))
        return (s * (HC_ZETA - HC_GAMMA) + HC_GAMMA).clamp(0.0, 1.0)

    def rules(self) -> dict[int, dict]:
        """Hard gates: {layer: {"kind": "gates", "open": [...]}} (JSON-able)."""
        open_ = (self.gate_values().detach() > 0.5).cpu().numpy()   # g = P(open) > 1/2
        return {l: {"kind": "gates", "layer": l, "open": open_[i].tolist()}
                for i, l in enumerate(self.gated_layers)}

    def _soft_gate(self, score: torch.Tensor, m: torch.Tensor, gi: int, z: torch.Tensor):
        """Mask matching with survivors m [B,T]: rank among survivors -> bin -> (sampled gate z
        [B,T], open probability [B,T])."""
        t = score.shape[1]
        body = m.clone()
        body[:, 0] = 0.0
        idx = torch.arange(t, device=score.device)
        ahead = (score[:, None, :] > score[:, :, None]) | (
            (score[:, None, :] == score[:, :, None]) & (idx[None, None, :] < idx[None, :, None]))
        rank = (ahead.float() * body[:, None, :]).sum(-1)          # [B,T]: survivors ranked above i
        n = body.sum(1, keepdim=True).clamp_min(1.0)
        bin_ = torch.clamp((rank * self.bins / n).floor().long(), 0, self.bins - 1)
        g = torch.gather(z[:, gi], 1, bin_)
        p = self.gate_values()[gi][bin_]
        cls = idx[None] == 0
        return torch.where(cls, torch.ones_like(g), g), torch.where(cls, torch.ones_like(p), p)

    # ------------------------------------------------------------------ forward passes
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                mode: str = "soft") -> dict[str, torch.Tensor]:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if mode == "hard":
            return self.run_hard(input_ids, attention_mask)
        m = attention_mask.float()
        m_exp = m                     # expected survival (product of open probabilities)
        h = self.embed(input_ids)
        z = self.gate_sample((input_ids.shape[0],))
        kept = []  # expected surviving tokens per layer [B]
        score = None
        for i, layer in enumerate(self.layers):
            if mode == "soft" and i in self.gated_layers and score is not None:
                g, p = self._soft_gate(score.detach(), m, self.gated_layers.index(i), z)
                m, m_exp = m * g, m_exp * p
            kept.append(m_exp.sum(1))
            # log-mask on the keys: m=1 -> 0, m -> 0 -> token removed (NEG below 1e-4, as in hard mode)
            bias = torch.where(m >= 1e-4, torch.log(m.clamp_min(1e-4)), torch.full_like(m, NEG))
            last = i == len(self.layers) - 1 and self.cls_last
            h, score = layer_forward(layer, h, bias, m, self.heads, cls_only=last)
        return {"logits": self.head(h[:, 0]), "kept": torch.stack(kept, 1)}

    @torch.no_grad()
    def run_hard(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 rules: dict[int, dict] | None = None) -> dict[str, Any]:
        """Inference with hard selection and physical token removal. ``rules`` overrides the
        learned gates (baselines: ratio / threshold / first-k); {} = ungated."""
        return self.hard_forward(input_ids, attention_mask, rules)

    def hard_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     rules: dict[int, dict] | None = None) -> dict[str, Any]:
        """run_hard with autograd (the selection itself is discrete): trains the encoder under the
        physical removal it will see at inference, on the shortened sequences (fast)."""
        rules = self.rules() if rules is None else rules
        valid = attention_mask.bool().cpu().numpy()
        h = self.embed(input_ids)
        pos = np.broadcast_to(np.arange(input_ids.shape[1]), valid.shape).copy()
        counts = np.zeros((valid.shape[0], len(self.layers)), dtype=np.int64)
        kept_pos = []
        score = None
        for i, layer in enumerate(self.layers):
            rule = rules.get(i)
            if rule is not None and score is not None:
                keep = select_keep(score.detach().cpu().numpy(), valid, rule)
                order = compact_order(keep)
                idx = torch.from_numpy(order)
                h = torch.gather(h, 1, idx[..., None].expand(-1, -1, h.shape[-1]))
                valid = np.take_along_axis(keep, order, 1)
                pos = np.take_along_axis(pos, order, 1)
            counts[:, i] = valid.sum(1)
            kept_pos.append(np.where(valid, pos, -1))
            mask = torch.from_numpy(valid.astype(np.float32))
            last = i == len(self.layers) - 1 and self.cls_last
            h, score = layer_forward(layer, h, (1.0 - mask) * NEG, mask, self.heads, cls_only=last)
        return {"logits": self.head(h[:, 0]), "tokens_per_layer": counts, "kept_positions": kept_pos}

    # ------------------------------------------------------------------ checks
    @torch.no_grad()
    def check_against(self, source: nn.Module, tol: float = 1e-4, seed: int = 0) -> dict[str, float]:
        """Numerical check of the wrap: runs ``source`` (the transformers model this was built from)
        and this model ungated on the same small padded batch. Compares the final hidden states of
        the real tokens and, where the source has a classification head that was copied, the
        logits. Raises UsageError above ``tol`` (max abs difference)."""
        was = self.training
        self.eval()
        source.eval()
        g = torch.Generator().manual_seed(seed)
        vocab = self.embed.word.num_embeddings
        lo = min(vocab - 1, max(5, self.pad_id + 1))
        ids = torch.randint(lo, vocab, (2, 9), generator=g)
        mask = torch.ones_like(ids)
        mask[1, 5:] = 0
        ids[1, 5:] = self.pad_id
        m = mask.float()
        h = self.embed(ids)
        for layer in self.layers:
            h, _ = layer_forward(layer, h, (1.0 - m) * NEG, m, self.heads)
        prefix = getattr(source, "base_model_prefix", "")
        core = getattr(source, prefix, source) if prefix else source
        ref = core(input_ids=ids, attention_mask=mask)[0]
        err = {"hidden": float((h - ref).abs()[mask.bool()].max())}
        logits = getattr(source(input_ids=ids, attention_mask=mask), "logits", None)
        if logits is not None and logits.shape[-1] == self.head.out.out_features:
            err["logits"] = float((self.forward(ids, mask, mode="full")["logits"] - logits).abs().max())
        self.train(was)
        bad = {k: v for k, v in err.items() if not v <= tol}
        if bad:
            raise UsageError(f"{type(source).__name__}: edgekit's re-implementation of the encoder differs from "
                             f"transformers' by {bad} (tolerance {tol:g}), so it is not supported",
                             f"use one of: {SUPPORTED}")
        return err

    # ------------------------------------------------------------------ costs
    def layer_token_cost(self, cls_last: bool | None = None) -> np.ndarray:
        """Relative per-token FLOPs of each layer (n^2 attention terms ignored), 1 = a full layer."""
        cls_last = self.cls_last if cls_last is None else cls_last
        full = 4 * self.hidden * self.hidden + 2 * self.hidden * self.inter
        c = np.ones(len(self.layers))
        if cls_last:
            c[-1] = 2 * self.hidden * self.hidden / full     # only K and V projections scale with n
        return c

    def regularizers(self, kept: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """sparsity_gates: the L0 term of the paper, mean open probability of the gates, each
        layer's gates weighted by that layer's per-token cost (penalises a gate by what its own
        layer computes, not by everything downstream); sparsity_flops: expected fraction of the
        encoder's token-proportional FLOPs still computed (cumulative survival); bimodal:
        mean g(1-g)."""
        n = attention_mask.float().sum(1, keepdim=True).clamp_min(1.0)
        w = torch.as_tensor(self.layer_token_cost(), dtype=kept.dtype)
        flops = ((kept / n) * w).sum(1).mean() / w.sum()
        g = self.gate_values()
        wg = w[torch.as_tensor(self.gated_layers)]
        gates = (g.mean(1) * wg).sum() / wg.sum()
        bimodal = (g * (1 - g)).mean()
        return {"sparsity_gates": gates, "sparsity_flops": flops, "bimodal": bimodal}

    def flops(self, tokens_per_layer: np.ndarray, cls_last: bool | None = None) -> np.ndarray:
        """Counted FLOPs per example (encoder layers + head) from tokens computed at each layer.
        cls_last (default: the model's setting): the last layer computes only the [CLS] query."""
        cls_last = self.cls_last if cls_last is None else cls_last
        t = np.asarray(tokens_per_layer)
        f = np.zeros(t.shape[0], dtype=np.float64)
        for i in range(t.shape[1]):
            fn = last_layer_cls_flops if (cls_last and i == t.shape[1] - 1) else layer_flops
            f += np.array([fn(int(n), self.hidden, self.inter) for n in t[:, i]], dtype=np.float64)
        return f + 2 * (self.hidden * self.hidden + self.hidden * self.head.out.out_features)
