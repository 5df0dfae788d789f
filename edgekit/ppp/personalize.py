"""PPP — prototype-based personalized pruning (PyTorch path).

    gated = load_checkpoint("edgekit/ppp/weights/ppp_fashion.safetensors")   # or train_gated(...)
    res = personalize(gated, personal_x, keep_ratio=0.4)   # no labels, no gradient step
    res.module      # static nn.Module with the closed channels physically removed
    export_personalized(res, out="out/")                   # bundle with provenance

Training lives in :mod:`edgekit.ppp.train`; the torch-free bundle path in
:mod:`edgekit.runtimes.pipelines.ppp`.
"""
from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekit.core.errors import DataError, EdgekitError
from edgekit.ppp.nets import GatedNet, StaticNet
from edgekit.runtimes.pipelines.ppp_proto import (
    COUPLING,
    NotPPPError,
    check_personal,
    keep_masks,
    prototype,
)


# ---------------------------------------------------------------- cost
def cost(module: nn.Module, sample_shape: tuple) -> dict:
    """Multiply-accumulates (reported as FLOPs = MACs) and parameter count for one sample."""
    macs = [0]

    def hook(m, inp, out):
        if isinstance(m, nn.Conv2d):
            macs[0] += out.numel() // out.shape[0] * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            macs[0] += out.numel() // out.shape[0] * m.in_features
    hs = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(torch.zeros(1, *sample_shape))
    finally:
        for h in hs:
            h.remove()
        module.train(was)
    return {"flops": int(macs[0]), "params": int(sum(p.numel() for p in module.parameters()))}


# ---------------------------------------------------------------- gates -> prototype -> masks
def gate_probs(gated: GatedNet, x: np.ndarray, batch: int = 256) -> list[np.ndarray]:
    """Per-sample gate probabilities of every unit (eval mode, per-sample hard gates)."""
    gated.eval()
    outs: list[list[np.ndarray]] = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            _, probs = gated.forward_with_probs(torch.from_numpy(np.ascontiguousarray(x[i:i + batch])))
            outs.append([p.numpy() for p in probs])
    return [np.concatenate([o[k] for o in outs]) for k in range(len(outs[0]))]


def l1_masks(gated: GatedNet, keep_ratio: float) -> list[np.ndarray]:
    """Magnitude baseline: keep the channels whose producing filter has the largest L1 norm."""
    scores = []
    for u in gated.units():
        w = {"basic": "conv1", "inv": "expand", "head": "conv"}[u.kind]
        scores.append(getattr(u, w).weight.detach().abs().sum(dim=(1, 2, 3)).numpy())
    return keep_masks(scores, keep_ratio=keep_ratio)


def random_masks(gated: GatedNet, keep_ratio: float, rng: np.random.Generator) -> list[np.ndarray]:
    return keep_masks([rng.random(w) for w in gated.widths()], keep_ratio=keep_ratio)


# ---------------------------------------------------------------- physical pruning
def prune(gated: GatedNet, masks: list[np.ndarray]) -> StaticNet:
    """A gate-free StaticNet holding only the kept channels; every kept value is copied unchanged."""
    units = gated.units()
    if len(masks) != len(units):
        raise EdgekitError(f"{len(masks)} masks for {len(units)} gated units", "compute masks from this model")
    widths = [int(np.count_nonzero(m)) for m in masks]
    static = StaticNet(gated.cfg, gated.cfg["num_classes"], widths=widths)
    src = gated.state_dict()
    rules = {}
    for i, (u, m) in enumerate(zip(units, masks)):
        prefix = "head." if u.kind == "head" else f"blocks.{i}."
        idx = torch.from_numpy(np.flatnonzero(m))
        for name, axis in COUPLING[u.kind]:
            rules[prefix + name] = (idx, axis)
    dst = {}
    for k, v in static.state_dict().items():
        t = src[k]
        if k in rules:
            idx, axis = rules[k]
            t = t.index_select(axis, idx)
        if t.shape != v.shape:
            raise EdgekitError(f"internal: {k} has shape {tuple(t.shape)}, expected {tuple(v.shape)}")
        dst[k] = t.clone()
    static.load_state_dict(dst)
    return static.eval()


def masked(gated: GatedNet, masks: list[np.ndarray]) -> GatedNet:
    """The gated model with its gates frozen to ``masks`` (reference for the pruned network)."""
    g = copy.deepcopy(gated).eval()
    g.fixed_masks = [torch.from_numpy(m.astype(np.float32)) for m in masks]
    return g


def fold_bn(module: nn.Module) -> nn.Module:
    """Copy of a StaticNet with every conv's BatchNorm folded into the conv (BN -> Identity)."""
    m = copy.deepcopy(module).eval()
    pairs = []
    for b in [*m.blocks, m.head]:
        if b.kind == "basic":
            pairs += [(b, "conv1", "bn1"), (b, "conv2", "bn2")]
            if b.short is not None:
                pairs.append((b.short, "0", "1"))
        elif b.kind == "inv":
            pairs += [(b, "expand", "bn1"), (b, "dw", "bn2"), (b, "project", "bn3")]
        else:
            pairs.append((b, "conv", "bn"))
    pairs.append((m.stem, "0", "1"))
    with torch.no_grad():
        for owner, cname, bname in pairs:
            conv, bn = getattr(owner, cname), getattr(owner, bname)
            s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                            groups=conv.groups, bias=True)
            new.weight.copy_(conv.weight * s[:, None, None, None])
            b0 = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            new.bias.copy_((b0 - bn.running_mean) * s + bn.bias)
            setattr(owner, cname, new)
            setattr(owner, bname, nn.Identity())
    return m


# ---------------------------------------------------------------- personalization
@dataclass
class PPPResult:
    module: StaticNet
    masks: list[np.ndarray]
    prototype: list[np.ndarray]
    info: dict = field(default_factory=dict)


def personalize(gated: GatedNet, x: np.ndarray, keep_ratio: float | None = None, threshold: float = 0.5,
                sample_shape: tuple | None = None) -> PPPResult:
    """Personal samples (no labels) -> prototype -> keep-masks -> physically pruned static module.

    No gradient step: the gated weights are only read (under ``torch.no_grad``)."""
    t0 = time.perf_counter()
    shape = tuple(sample_shape or gated.cfg.get("input_shape") or x.shape[1:])
    x = check_personal(x, shape)
    probs = gate_probs(gated, x)
    proto = prototype(probs)
    masks = keep_masks(proto, keep_ratio=keep_ratio, threshold=threshold)
    with torch.no_grad():
        static = prune(gated, masks)
    secs = time.perf_counter() - t0
    full = cost(StaticNet(gated.cfg, gated.cfg["num_classes"]), shape)
    small = cost(static, shape)
    info = {"prototype_size": int(len(x)), "keep_ratio": keep_ratio, "threshold": None if keep_ratio else threshold,
            "kept_channels": [int(m.sum()) for m in masks], "channels": [int(m.size) for m in masks],
            "flops_before": full["flops"], "flops_after": small["flops"], "params_before": full["params"],
            "params_after": small["params"], "seconds": round(secs, 4)}
    return PPPResult(static, masks, proto, info)


# ---------------------------------------------------------------- checkpoints (safetensors, never pickle)
def save_checkpoint(gated: GatedNet, path, meta: dict) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_suffix(".tmp")
    state = {k: v.contiguous() for k, v in gated.state_dict().items() if "num_batches_tracked" not in k}
    save_file(state, str(tmp), metadata={"edgekit_ppp": json.dumps({**meta, "cfg": gated.cfg})})
    os.chmod(tmp, 0o644)
    tmp.replace(path)
    return path


def load_checkpoint(path) -> tuple[GatedNet, dict]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise DataError(f"checkpoint {path} does not exist", "train one with `edgekit ppp train`")
    if path.is_dir():
        raise NotPPPError(f"{path} is a folder but not an edgekit bundle", "give a gated NAME.edgekit bundle "
                          "(`edgekit ppp export`) or a PPP checkpoint .safetensors")
    try:
        with safe_open(str(path), "pt") as f:
            raw = (f.metadata() or {}).get("edgekit_ppp")
    except Exception as e:  # SafetensorError, OSError: not a safetensors file
        raise NotPPPError(f"{path} is not a PPP checkpoint (.safetensors) nor a bundle folder: {e}",
                          "give a gated NAME.edgekit bundle (`edgekit ppp export`) or a checkpoint from "
                          "`edgekit ppp train`") from None
    if raw is None:
        raise NotPPPError(f"{path} was not trained for PPP (no gate metadata)", "train with `edgekit ppp train`")
    meta = json.loads(raw)
    cfg = meta.pop("cfg")
    gated = GatedNet({k: v for k, v in cfg.items() if k != "num_classes"}, cfg["num_classes"])
    gated.cfg.update({k: v for k, v in cfg.items()})
    gated.load_state_dict(load_file(str(path)), strict=False)
    return gated.eval(), meta
