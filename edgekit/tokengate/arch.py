"""Hugging Face BERT-family encoders seen through one layout (the one token gating computes with).

``bert_parts`` takes a transformers model — BERT-layout encoders (BERT, RoBERTa, XLM-RoBERTa,
CamemBERT, ELECTRA, ERNIE, MiniLM) or DistilBERT, base model or *ForSequenceClassification —
and returns an ``Embed`` module, its layers with BERT's attribute paths (DistilBERT blocks are
viewed, not copied) and its classification head; ``Head`` rebuilds that head. Whether the
re-implementation computes what transformers computes is checked numerically by
``TokenGatedBert.check_against``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgekit.core.errors import UsageError

SUPPORTED = ("BERT-layout encoders (BERT, RoBERTa, XLM-RoBERTa, CamemBERT, ELECTRA, ERNIE, MiniLM) "
             "and DistilBERT")
HEAD_ACTS = {"tanh": torch.tanh, "gelu": nn.functional.gelu, "relu": torch.relu}


class _Box(nn.Module):
    """A named container, so an adapted layer exposes BERT's attribute paths."""

    def __init__(self, mods: dict[str, nn.Module]):
        super().__init__()
        for k, v in mods.items():
            setattr(self, k, v)


def _distilbert_layer(block: nn.Module) -> nn.Module:
    """A DistilBERT TransformerBlock seen through BERT's layer layout (the same Linear and
    LayerNorm modules, no copies): attention.self.{query,key,value}, attention.output.{dense,
    LayerNorm}, intermediate (lin1 + activation), output.{dense, LayerNorm}."""
    at, ffn = block.attention, block.ffn
    return _Box({
        "attention": _Box({"self": _Box({"query": at.q_lin, "key": at.k_lin, "value": at.v_lin, "dropout": at.dropout}),
                           "output": _Box({"dense": at.out_lin, "LayerNorm": block.sa_layer_norm,
                                           "dropout": nn.Identity()})}),
        "intermediate": nn.Sequential(ffn.lin1, ffn.activation),
        "output": _Box({"dense": ffn.lin2, "LayerNorm": block.output_layer_norm, "dropout": ffn.dropout})})


def bert_parts(bert: nn.Module) -> dict[str, Any]:
    """The pieces of a transformers BERT-family model (base model or *ForSequenceClassification):
    {"family", "embed" (Embed), "layers" (ModuleList in BERT's layer layout), "config",
    "head": (dense, out, activation) of its classification head or pooler (None if absent)}.
    Unsupported architectures raise a UsageError naming the supported ones; check_wrapped then
    verifies numerically that the re-implementation computes what transformers computes."""
    prefix = getattr(bert, "base_model_prefix", "")
    core = getattr(bert, prefix, bert) if prefix else bert
    core = getattr(bert, "bert", core)
    cfg = getattr(core, "config", None)
    emb = getattr(core, "embeddings", None)
    if cfg is None or emb is None or not hasattr(emb, "word_embeddings") or not hasattr(emb, "position_embeddings"):
        raise UsageError(f"{type(bert).__name__} is not a BERT-family encoder", f"pass one of: {SUPPORTED}")
    if getattr(cfg, "position_embedding_type", "absolute") not in (None, "absolute"):
        raise UsageError(f"{type(bert).__name__} uses {cfg.position_embedding_type!r} position embeddings",
                         f"token gating supports absolute position embeddings ({SUPPORTED})")
    enc_layers = getattr(getattr(core, "encoder", None), "layer", None)
    family = "bert"
    if enc_layers is None and hasattr(getattr(core, "transformer", None), "layer"):
        family, enc_layers = "distilbert", core.transformer.layer
    if enc_layers is None or not len(enc_layers):
        raise UsageError(f"{type(bert).__name__} has no encoder.layer stack", f"pass one of: {SUPPORTED}")
    if family == "bert":
        s = getattr(enc_layers[0], "attention", None)
        if not all(hasattr(getattr(s, "self", None), a) for a in ("query", "key", "value")):
            raise UsageError(f"{type(bert).__name__}'s attention is not laid out like BERT's",
                             f"pass one of: {SUPPORTED}")
        layers = enc_layers
    else:
        layers = nn.ModuleList([_distilbert_layer(b) for b in enc_layers])
    # RoBERTa-style embeddings number positions from padding_idx + 1
    offset = int(emb.padding_idx) + 1 if hasattr(emb, "create_position_ids_from_input_ids") or \
        type(emb).__name__.lower().startswith(("roberta", "xlmroberta", "camembert")) else 0
    embed = Embed(emb, pos_offset=offset, project=getattr(core, "embeddings_project", None))
    head = None
    clf = getattr(bert, "classifier", None)
    if isinstance(getattr(clf, "out_proj", None), nn.Linear) and isinstance(getattr(clf, "dense", None), nn.Linear):
        act = "gelu" if type(getattr(clf, "activation", None)).__name__.lower().startswith("gelu") else "tanh"
        head = (clf.dense, clf.out_proj, act)                 # RoBERTa / ELECTRA classification heads
    elif family == "distilbert" and isinstance(getattr(bert, "pre_classifier", None), nn.Linear):
        head = (bert.pre_classifier, clf if isinstance(clf, nn.Linear) else None, "relu")
    elif getattr(core, "pooler", None) is not None and hasattr(core.pooler, "dense"):
        head = (core.pooler.dense, clf if isinstance(clf, nn.Linear) else None, "tanh")   # BERT pooler
    return {"family": family, "embed": embed, "layers": layers, "config": cfg, "head": head}


class Embed(nn.Module):
    """input_ids -> hidden (word + absolute position (+ offset) + token-type 0, LayerNorm,
    optional projection (ELECTRA's embedding_size -> hidden))."""

    def __init__(self, emb: nn.Module, pos_offset: int = 0, project: nn.Module | None = None):
        super().__init__()
        self.word, self.pos = emb.word_embeddings, emb.position_embeddings
        self.typ = getattr(emb, "token_type_embeddings", None)
        self.norm, self.drop = emb.LayerNorm, emb.dropout
        self.pos_offset = int(pos_offset)
        self.project = project

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        pos = torch.arange(t, device=input_ids.device) + self.pos_offset
        h = self.word(input_ids) + self.pos(pos)[None]
        if self.typ is not None:
            h = h + self.typ.weight[0][None, None]
        h = self.drop(self.norm(h))
        return self.project(h) if self.project is not None else h


class Head(nn.Module):
    """[CLS] hidden -> logits (dense + activation (tanh: BERT pooler / RoBERTa head; gelu: ELECTRA;
    relu: DistilBERT), dropout, linear). Copies the source model's head where it has one."""

    def __init__(self, hidden: int, num_labels: int, source: tuple | None = None, act: str = "tanh"):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.act = source[2] if source is not None else act
        if self.act not in HEAD_ACTS:
            raise UsageError(f"unknown head activation {self.act!r}", f"use one of {sorted(HEAD_ACTS)}")
        self.drop = nn.Dropout(0.1)
        self.out = nn.Linear(hidden, num_labels)
        if source is not None:
            self.dense.load_state_dict(source[0].state_dict())
            if source[1] is not None and source[1].out_features == num_labels:
                self.out.load_state_dict(source[1].state_dict())

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(HEAD_ACTS[self.act](self.dense(cls))))
