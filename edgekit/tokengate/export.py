"""Export a token-gated BERT as a multi-graph bundle (pipeline kind ``token_gating``).

Graphs: ``embed`` (input_ids -> hidden), ``layer0..layer{L-1}`` (hidden, mask -> hidden_out,
score; dynamic batch and sequence length) and ``head`` (cls -> logits). The torch-free runner in
runtimes/tokengate_pipeline.py selects and gathers the kept tokens between layer graphs, so each
layer graph really runs on the shortened sequence. ``export_ungated`` writes the plain one-graph
model used as the latency reference.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekit.exporters.build import GraphSource, export_graphs, export_model
from edgekit.tokengate.model import (
    NEG,
    LastHeadGraph,
    LayerGraph,
    TokenGatedBert,
    layer_forward,
)

DYN_BT = {0: "batch", 1: "seq"}


class UngatedGraph(nn.Module):
    """(input_ids, attention_mask) -> logits, all tokens through all layers (reference model).
    ``cls_last``: the last layer computes only the [CLS] row (exact; a reference row)."""

    def __init__(self, model: TokenGatedBert, cls_last: bool = False):
        super().__init__()
        self.m, self.cls_last = model, cls_last

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.to(torch.float32)
        h = self.m.embed(input_ids)
        n = len(self.m.layers)
        for i, layer in enumerate(self.m.layers):
            h, _ = layer_forward(layer, h, (1.0 - mask) * NEG, mask, self.m.heads,
                                 cls_only=self.cls_last and i == n - 1)
        return self.m.head(h[:, 0])


class UngatedSingle(nn.Module):
    """Batch-1 ungated reference with the same layer code as the one-graph gated model:
    input_ids [1, T] -> logits (no mask input, no key bias)."""

    def __init__(self, model: TokenGatedBert, cls_last: bool = False):
        super().__init__()
        self.m, self.cls_last = model, cls_last

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.m.embed(input_ids)
        n = len(self.m.layers)
        for i, layer in enumerate(self.m.layers):
            h, _ = layer_forward(layer, h, None, None, self.m.heads, cls_only=self.cls_last and i == n - 1, batch1=True)
        return self.m.head(h[:, 0])


def _examples(model: TokenGatedBert, ids: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    """Real hidden states entering each layer for the example batch (ungated)."""
    hs = []
    with torch.no_grad():
        m = torch.from_numpy(mask.astype(np.float32))
        h = model.embed(torch.from_numpy(ids))
        for layer in model.layers:
            hs.append(h.numpy().copy())
            h, _ = layer_forward(layer, h, (1.0 - m) * NEG, m, model.heads)
    hs.append(h.numpy().copy())
    return hs


def example_batch(seq: int = 12, vocab: int = 1000, batch: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(1000 if vocab > 2000 else 5, vocab, size=(batch, seq)).astype(np.int64)
    ids[:, 0] = 101 if vocab > 2000 else 1
    mask = np.ones((batch, seq), dtype=np.int64)
    mask[1, seq // 2:] = 0
    ids[1, seq // 2:] = 0
    return ids, mask


def _tokenizer_kind(path: str | Path) -> str:
    """'tokenizer.json (WordPiece)' / '(BPE)' / ... from the tokenizer's own description."""
    import json
    try:
        kind = json.loads(Path(path).read_text()).get("model", {}).get("type") or "unknown model"
    except (OSError, ValueError, AttributeError):
        kind = "unreadable"
    return f"tokenizer.json ({kind})"


def pipeline_params(model: TokenGatedBert, rules: dict | None, max_len: int, tokenizer: bool) -> dict:
    rules = model.rules() if rules is None else rules
    return {"num_layers": len(model.layers), "rules": {str(k): v for k, v in rules.items()},
            "cls_last": bool(model.cls_last),
            "bins": model.bins, "gated_layers": model.gated_layers, "max_len": int(max_len),
            "hidden": model.hidden, "intermediate": model.inter, "pad_id": int(model.pad_id),
            "tokenizer": "tokenizer.json" if tokenizer else None}


def export_gated(model: TokenGatedBert, out: str | Path, name: str = "tokengate", *, targets: Any = ("onnx",),
                 rules: dict | None = None, max_len: int = 64, tokenizer_json: str | Path | None = None,
                 labels: list[str] | None = None, metadata: dict | None = None, progress=None,
                 options: dict | None = None, single: bool = True):
    """Write ``out/NAME.edgekit`` with embed / layer graphs / last (last layer, [CLS] row only,
    + head) and the gate rules; ``single`` adds the batch-1 one-graph (graph ``single``, used by
    the runtime for one unpadded row). ``options`` goes to the exporters, e.g.
    {"onnx": {"exporter": "torchscript"}}."""
    from edgekit.core.specs import TensorSpec

    model = model.eval()
    vocab = model.embed.word.num_embeddings
    ids, mask = example_batch(12, vocab)
    hs = _examples(model, ids, mask)
    graphs = {"embed": GraphSource(model.embed, {"input_ids": ids}, ["hidden"], {"input_ids": DYN_BT})}
    n_layers = len(model.layers)
    for i, layer in enumerate(model.layers):
        if model.cls_last and i == n_layers - 1:
            graphs["last"] = GraphSource(
                LastHeadGraph(layer, model.head, model.heads), {"hidden": hs[i].astype(np.float32), "mask": mask},
                ["logits"], {"hidden": DYN_BT, "mask": DYN_BT})
            break
        graphs[f"layer{i}"] = GraphSource(
            LayerGraph(layer, model.heads), {"hidden": hs[i].astype(np.float32), "mask": mask},
            ["hidden_out", "score"], {"hidden": DYN_BT, "mask": DYN_BT})
    else:
        graphs["head"] = GraphSource(model.head, {"cls": hs[-1][:, 0].astype(np.float32)}, ["logits"],
                                     {"cls": {0: "batch"}})
    tmpdir = None
    if single:
        import tempfile

        from edgekit.tokengate.onegraph import (
            OneGraphGated,
            b1_example_len,
            example_ids,
            export_b1,
        )
        tmpdir = tempfile.TemporaryDirectory(prefix="tg-single-")
        og = OneGraphGated(model, rules, max_len)
        b1_ids = example_ids(vocab, b1_example_len(max_len))
        one = export_b1(og, Path(tmpdir.name) / "single.onnx", b1_ids, og.output_names)
        graphs["single"] = GraphSource(og, {"input_ids": b1_ids}, og.output_names, {"input_ids": {1: "seq"}},
                                       onnx_path=str(one))
    n_labels = model.head.out.out_features
    inputs = [TensorSpec("input_ids", "int64", ("batch", "seq")), TensorSpec("attention_mask", "int64", ("batch", "seq"))]
    outputs = [TensorSpec("logits", "float32", ("batch", n_labels)),
               TensorSpec("tokens_per_layer", "int64", ("batch", len(model.layers)))]
    meta = {"labels": labels or [str(i) for i in range(n_labels)], "task": "text-classification",
            "preprocessing": {"tokenizer": _tokenizer_kind(tokenizer_json) if tokenizer_json else None,
                              "max_len": max_len, "truncation": "keep first max_len-1 pieces + [SEP]"},
            **(metadata or {})}
    extra = {"tokenizer.json": Path(tokenizer_json)} if tokenizer_json else None
    params = pipeline_params(model, rules, max_len, bool(tokenizer_json))
    params["single"] = "single" if single else None
    try:
        return export_graphs(graphs, pipeline={"kind": "token_gating", "params": params},
                             inputs=inputs, outputs=outputs, targets=targets, out=out, name=name,
                             metadata=meta, extra_files=extra, progress=progress, options=options)
    finally:
        if tmpdir is not None:
            tmpdir.cleanup()


def export_ungated(model: TokenGatedBert, out: str | Path, name: str = "ungated", *, targets: Any = ("onnx",),
                   labels: list[str] | None = None, metadata: dict | None = None, cls_last: bool = False,
                   options: dict | None = None):
    """One-graph ungated model (input_ids, attention_mask -> logits). ``cls_last``: the last layer
    computes only the [CLS] row (exact)."""
    ids, mask = example_batch(12, model.embed.word.num_embeddings)
    meta = {"labels": labels or [], "task": "text-classification", **(metadata or {})}
    return export_model(UngatedGraph(model.eval(), cls_last), {"input_ids": ids, "attention_mask": mask},
                          output_names=["logits"], dynamic={"input_ids": DYN_BT, "attention_mask": DYN_BT},
                          targets=targets, out=out, name=name, metadata=meta, options=options)


def export_ungated_single_bundle(model: TokenGatedBert, out: str | Path, name: str = "ungated_b1", *,
                                 cls_last: bool = False, max_len: int = 64):
    """Bundle of the batch-1 ungated reference (graph ``main``: input_ids [1, T] -> logits), run by
    edgekit's ORT runtime exactly like the gated bundle's ``single`` graph."""
    import tempfile

    from edgekit.tokengate.onegraph import b1_example_len, example_ids

    with tempfile.TemporaryDirectory(prefix="tg-ungated-b1-") as d:
        path = export_ungated_single(model, Path(d) / "main.onnx", cls_last)
        src = GraphSource(UngatedSingle(model.eval(), cls_last).eval(),
                          {"input_ids": example_ids(model.embed.word.num_embeddings, b1_example_len(max_len))},
                          ["logits"], {"input_ids": {1: "seq"}}, onnx_path=str(path))
        return export_graphs({"main": src}, targets=("onnx",), out=out, name=name,
                             metadata={"task": "text-classification"})


def export_ungated_single(model: TokenGatedBert, path: str | Path, cls_last: bool = False) -> Path:
    """Batch-1 ungated reference ONNX (input_ids [1, T] -> logits) written with the same exporter
    and layer code as the gated one-graph, for a like-for-like batch-1 latency comparison."""
    from edgekit.tokengate.onegraph import example_ids, export_b1
    return export_b1(UngatedSingle(model.eval(), cls_last).eval(), path,
                     example_ids(model.embed.word.num_embeddings), ["logits"])
