"""Gated training for PPP.

loss = cross-entropy
     + budget   * (FLOP-weighted mean gate probability - target)^2
     + consist  * within-class variance of the gate probabilities (so a class mean is a good prototype)

Half of the steps run in *prototype mode*: the batch is split into random groups of 2-4 classes
(simulated users), each group's samples use the top-k mask of the group's mean gate probability
(k = a random keep ratio), with a straight-through gradient. The network thus learns to work with
exactly the kind of static mask personalization produces. Other steps use per-sample hard gates
with logistic (Gumbel-sigmoid) noise and a straight-through estimator.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from edgekit.ppp.nets import GatedNet, StaticNet
from edgekit.ppp.personalize import cost


def unit_weights(gated: GatedNet, sample_shape) -> torch.Tensor:
    """Share of the gated FLOPs each unit's channels account for (for the budget term)."""
    full = cost(StaticNet(gated.cfg, gated.cfg["num_classes"]), sample_shape)["flops"]
    shares = []
    for i, w in enumerate(gated.widths()):
        widths = list(gated.widths())
        widths[i] = max(1, w // 2)
        half = cost(StaticNet(gated.cfg, gated.cfg["num_classes"], widths=widths), sample_shape)["flops"]
        shares.append((full - half) / (w - max(1, w // 2)) * w / full)
    return torch.tensor(shares, dtype=torch.float32)


def _groups(y: torch.Tensor, num_classes: int, rng: np.random.Generator) -> torch.Tensor:
    perm = rng.permutation(num_classes)
    gid = np.zeros(num_classes, dtype=np.int64)
    i = g = 0
    while i < num_classes:
        n = int(rng.integers(2, 5))
        gid[perm[i:i + n]] = g
        i, g = i + n, g + 1
    return torch.from_numpy(gid)[y]


def consistency(probs: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    total = probs[0].new_zeros(())
    classes = torch.unique(y)
    for p in probs:
        for c in classes:
            pc = p[y == c]
            if len(pc) > 1:
                total = total + ((pc - pc.mean(0)) ** 2).sum(1).mean() / p.shape[1]
    return total / (len(probs) * len(classes))


def spec_augment(xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """SpecAugment-style: random time shift (+-6 frames), one frequency and one time mask, gain."""
    xb = xb.clone()
    n, _, f, t = xb.shape
    shift = int(torch.randint(-6, 7, (1,), generator=gen))
    xb = torch.roll(xb, shift, dims=3)
    for i in range(n):
        f0, fw = int(torch.randint(0, f, (1,), generator=gen)), int(torch.randint(0, 7, (1,), generator=gen))
        t0, tw = int(torch.randint(0, t, (1,), generator=gen)), int(torch.randint(0, 9, (1,), generator=gen))
        xb[i, :, f0:f0 + fw] = 0.0
        xb[i, :, :, t0:t0 + tw] = 0.0
    return xb + 0.3 * torch.randn(n, 1, 1, 1, generator=gen)


AUGMENT = {"specaug": spec_augment}


def train_gated(gated: GatedNet, x: np.ndarray, y: np.ndarray, *, epochs: int = 3, batch: int = 128,
                lr: float = 3e-3, target: float = 0.45, budget: float = 4.0, consist: float = 4.0,
                augment: str | None = None, weight_decay: float = 1e-4,
                proto_prob: float = 0.5, seed: int = 0, log=print, time_limit: float | None = None,
                x_val: np.ndarray | None = None, y_val: np.ndarray | None = None) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    nc = gated.cfg["num_classes"]
    shape = tuple(x.shape[1:])
    wts = unit_weights(gated, shape)
    wts = wts / wts.sum()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    steps = epochs * math.ceil(len(x) / batch)
    opt = torch.optim.AdamW(gated.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    aug = AUGMENT[augment] if augment else None
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    t0 = time.time()
    step = 0
    hist = []
    for ep in range(epochs):
        gated.train()
        order = torch.from_numpy(rng.permutation(len(x)))
        tot = {"ce": 0.0, "use": 0.0, "cons": 0.0, "acc": 0.0, "n": 0}
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            xb, yb = xt[idx], yt[idx]
            if aug is not None:
                xb = aug(xb, gen)
            proto_mode = rng.random() < proto_prob
            gated.group_ids = _groups(yb, nc, rng) if proto_mode else None
            gated.group_ratio = float(rng.uniform(0.25, 0.7))
            out, probs = gated.forward_with_probs(xb)
            ce = F.cross_entropy(out, yb)
            use = sum(w * p.mean() for w, p in zip(wts, probs))
            cons = consistency(probs, yb)
            loss = ce + budget * (use - target) ** 2 + consist * cons
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            n = len(yb)
            tot["ce"] += ce.item() * n
            tot["use"] += use.item() * n
            tot["cons"] += cons.item() * n
            tot["acc"] += float((out.argmax(1) == yb).float().sum())
            tot["n"] += n
            if time_limit and time.time() - t0 > time_limit:
                break
        gated.group_ids = None
        rec = {k: round(v / tot["n"], 4) for k, v in tot.items() if k != "n"}
        rec["epoch"] = ep + 1
        rec["seconds"] = round(time.time() - t0, 1)
        if x_val is not None:
            rec["val_acc"] = round(evaluate(gated, x_val, y_val), 4)
        hist.append(rec)
        log(f"epoch {ep + 1}: {rec}")
        if time_limit and time.time() - t0 > time_limit:
            log("time limit reached")
            break
    opt.zero_grad(set_to_none=True)
    gated.eval()
    return {"history": hist, "steps": step}


def evaluate(module, x: np.ndarray, y: np.ndarray, batch: int = 512) -> float:
    module.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = module(torch.from_numpy(x[i:i + batch]))
            out = out[0] if isinstance(out, tuple) else out
            correct += int((out.argmax(1).numpy() == y[i:i + batch]).sum())
    return correct / max(1, len(x))
