"""PPP export (PyTorch side): personalized bundles with provenance, and gated bundles that the
torch-free path (:mod:`edgekit.runtimes.pipelines.ppp`) can personalize on the device.

A gated bundle holds two graphs:
  ``main``    the dynamic path network; outputs ``logits`` and ``gate_0..gate_K`` (per-sample gate
              probabilities of every gated unit)
  ``static``  the same network without gates (all channels, BatchNorm folded into the convs): the
              graph the device slices
and a file ``ppp_gates.json``: for every gate, the tensors it controls (the unit's conv out-channels
and biases, depthwise conv, the next layer's input channels / Linear columns), the axis to slice,
and the sha256 + shape of each tensor so the ONNX initializer is found whatever name the exporter
gave it.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekit.exporters.build import GraphSource, export_graphs, export_model
from edgekit.ppp.nets import GatedNet, StaticNet
from edgekit.ppp.personalize import (
    NotPPPError,
    PPPResult,
    cost,
    fold_bn,
    load_checkpoint,
    personalize,
)
from edgekit.runtimes.pipelines.ppp import personal_name
from edgekit.runtimes.pipelines.ppp_proto import (
    COUPLING,
    DEPTHWISE,
    check_output,
    load_personal,
)

GATES_FILE = "ppp_gates.json"


class _WithGates(nn.Module):
    def __init__(self, gated: GatedNet):
        super().__init__()
        self.net = gated

    def forward(self, x):
        logits, probs = self.net.forward_with_probs(x)
        return (logits, *probs)


def _meta(meta: dict) -> dict:
    keep = ("labels", "preprocessing", "dataset", "task", "test_acc", "seed", "epochs")
    return {k: meta[k] for k in keep if k in meta}


def export_personalized(res: PPPResult, base: str, meta: dict, out, name: str | None = None,
                        targets=("onnx",), path_kind: str = "pytorch"):
    """Export the pruned static module (BN folded) through edgekit.export with PPP provenance."""
    shape = tuple(res.module.cfg.get("input_shape") or meta["input_shape"])
    example = np.zeros((1, *shape), dtype=np.float32)
    info = {k: v for k, v in res.info.items() if k != "seconds"}
    md = {**_meta(meta), "task": "classification",
          "provenance": {"method": "ppp", "path": path_kind, "base_model": base, **info,
                         "personalization_seconds": res.info.get("seconds")}}
    return export_model(fold_bn(res.module).eval(), {"x": example}, targets=targets, out=out,
                          name=name or personal_name(Path(str(base)).stem.split('.')[0]), dynamic={"x": {0: "batch"}},
                          input_names=["x"], output_names=["logits"], metadata=md)


def personalize_checkpoint(ckpt, data, out, keep_ratio=None, threshold=0.5, name=None) -> dict:
    """CLI path for a checkpoint: read + check personal data first (nothing written on error)."""
    check_output(out, name)
    gated, meta = load_checkpoint(ckpt)
    shape = tuple(gated.cfg.get("input_shape") or meta.get("input_shape"))
    x = load_personal(data, meta.get("input_name", "x"), shape)
    res = personalize(gated, x, keep_ratio=keep_ratio, threshold=threshold, sample_shape=shape)
    b = export_personalized(res, Path(ckpt).name, {**meta, "input_shape": list(shape)}, out, name=name)
    return {"bundle": str(b.root), **res.info}


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(np.ascontiguousarray(t.detach().numpy().astype(np.float32)).tobytes()).hexdigest()


def gate_map(gated: GatedNet, folded: StaticNet) -> dict:
    """Gate -> controlled tensors of the folded static network (names, axes, sha256, shapes)."""
    sd = folded.state_dict()
    units = []
    for i, u in enumerate(gated.units()):
        prefix = "head." if u.kind == "head" else f"blocks.{i}."
        tensors = []
        for pname, axis in COUPLING[u.kind]:
            k = prefix + pname
            if k in sd:
                tensors.append({"param": k, "axis": axis, "shape": list(sd[k].shape), "sha256": _sha(sd[k])})
        dw = prefix + DEPTHWISE[u.kind] if u.kind in DEPTHWISE else None
        units.append({"index": i, "kind": u.kind, "gate_output": f"gate_{i}", "channels": int(gated.widths()[i]),
                      "tensors": tensors, "depthwise": dw,
                      "couples": {"basic": "conv1 out + bn1 -> conv2 in (residual stream untouched)",
                                  "inv": "expand out + bn1 -> depthwise (in=out=groups) + bn2 -> project in",
                                  "head": "head conv out + bn -> Linear input columns"}[u.kind]})
    return {"format": "edgekit.ppp.gates", "version": 1, "gate_graph": "main", "static_graph": "static",
            "input": "x", "output": "logits", "units": units, "keep_rule": "ppp_proto.keep_masks"}


def export_gated(gated: GatedNet, meta: dict, out, name: str = "ppp-gated", targets=("onnx",)):
    """Gated bundle (graphs main + static, ppp_gates.json) for torch-free personalization."""
    gated = gated.eval()
    shape = tuple(gated.cfg["input_shape"])
    rng = np.random.default_rng(0)
    ex = {"x": rng.standard_normal((2, *shape)).astype(np.float32)}
    full = StaticNet(gated.cfg, gated.cfg["num_classes"])
    full.load_state_dict({k: v for k, v in gated.state_dict().items() if k in full.state_dict()})
    folded = fold_bn(full).eval()
    k = len(gated.units())
    c = cost(full, shape)
    gmap = gate_map(gated, folded)
    gmap.update({"base_model": name, "sample_shape": list(shape), "flops_full": c["flops"], "params_full": c["params"]})
    md = {**_meta(meta), "task": "classification",
          "ppp": {"gates_file": GATES_FILE, "gate_outputs": [f"gate_{i}" for i in range(k)],
                  "static_graph": "static", "flops_full": c["flops"], "params_full": c["params"]}}
    graphs = {"main": GraphSource(_WithGates(gated), ex, ["logits", *[f"gate_{i}" for i in range(k)]],
                                  {"x": {0: "batch"}}),
              "static": GraphSource(folded, ex, ["logits"], {"x": {0: "batch"}})}
    return export_graphs(graphs, targets=targets, out=out, name=name, metadata=md,
                         extra_files={GATES_FILE: json.dumps(gmap, indent=1).encode()})


def export_gated_checkpoint(ckpt, out, name: str | None = None, targets=("onnx",)):
    gated, meta = load_checkpoint(ckpt)
    if "input_shape" not in gated.cfg:
        raise NotPPPError(f"{ckpt} has no input shape recorded", "retrain with `edgekit ppp train`")
    return export_gated(gated, meta, out, name=name or Path(ckpt).stem.replace("_", "-") + "-gated", targets=targets)


def timed(fn, *a, **k):
    t0 = time.perf_counter()
    r = fn(*a, **k)
    return r, time.perf_counter() - t0
