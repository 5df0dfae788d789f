"""Gated (dynamic-path) networks for PPP and their static, physically pruned counterparts.

Every prunable unit is the *inner* channel set of a block, so that pruning is sound without a
generic dependency graph (the dependency analysis for the shipped architectures is explicit here):

* ``basic``  residual block  x -> conv3x3 -> BN -> ReLU -> [gate] -> conv3x3 -> BN -> (+ shortcut) -> ReLU
  gate k controls: conv1 out-channels, bn1, conv2 in-channels. The residual stream is never pruned.
* ``inv``    inverted residual  x -> conv1x1 -> BN -> ReLU6 -> dw3x3 -> BN -> ReLU6 -> [gate] -> conv1x1 -> BN (+ x)
  gate k controls: expand out-channels, bn1, the depthwise conv (in = out = groups), bn2, project
  in-channels. The gate sits after the depthwise so a closed channel contributes exactly zero.
* ``head``   conv1x1 -> BN -> ReLU -> [gate] -> global-avg-pool -> Linear
  gate k controls: head conv out-channels, its BN, the Linear head's input columns.

Gates are computed from the block input (global average pool -> 2-layer MLP -> one logit per
channel). ``GatedNet.forward`` in eval mode uses hard gates ``sigmoid(logit) > 0.5``; with
``fixed masks`` set it behaves exactly like the pruned static network.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# (kind, inner channels, out channels, stride); stem = (channels, stride); head channels last
FASHION_CFG = {"in_ch": 1, "stem": (16, 1), "blocks": [("basic", 48, 16, 2), ("basic", 96, 32, 1),
               ("inv", 128, 48, 2), ("inv", 192, 48, 1)], "head": 160}
KWS_CFG = {"in_ch": 1, "stem": (16, 2), "blocks": [("basic", 48, 24, 1), ("basic", 64, 32, 2),
           ("inv", 128, 48, 2), ("inv", 160, 48, 1)], "head": 128}
TINY_CFG = {"in_ch": 1, "stem": (8, 1), "blocks": [("basic", 16, 8, 1), ("inv", 24, 12, 2)], "head": 24}


class GateNet(nn.Module):
    """Dynamic path network: block input -> per-channel gate logits."""

    def __init__(self, c_in: int, c_out: int, hidden: int = 16):
        super().__init__()
        self.fc1 = nn.Linear(c_in, hidden)
        self.fc2 = nn.Linear(hidden, c_out)
        nn.init.constant_(self.fc2.bias, 2.0)  # start with gates open

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3)))))


class _Block(nn.Module):
    kind = ""

    def inner(self) -> int:
        raise NotImplementedError


class BasicBlock(_Block):
    kind = "basic"

    def __init__(self, c_in, mid, c_out, stride, gated=True):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, mid, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short = None
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.gate = GateNet(c_in, mid) if gated else None

    def forward(self, x, gate_fn=None):
        h = F.relu(self.bn1(self.conv1(x)))
        if gate_fn is not None:
            h = h * gate_fn(self, x)[:, :, None, None]
        out = self.bn2(self.conv2(h))
        return F.relu(out + (x if self.short is None else self.short(x)))

    def inner(self):
        return self.conv1.out_channels


class InvBlock(_Block):
    kind = "inv"

    def __init__(self, c_in, mid, c_out, stride, gated=True):
        super().__init__()
        self.expand = nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.dw = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.project = nn.Conv2d(mid, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.residual = stride == 1 and c_in == c_out
        self.gate = GateNet(c_in, mid) if gated else None

    def forward(self, x, gate_fn=None):
        h = F.relu6(self.bn1(self.expand(x)))
        h = F.relu6(self.bn2(self.dw(h)))
        if gate_fn is not None:
            h = h * gate_fn(self, x)[:, :, None, None]
        out = self.bn3(self.project(h))
        return out + x if self.residual else out


class Head(_Block):
    kind = "head"

    def __init__(self, c_in, mid, num_classes, gated=True):
        super().__init__()
        self.conv = nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn = nn.BatchNorm2d(mid)
        self.fc = nn.Linear(mid, num_classes)
        self.gate = GateNet(c_in, mid) if gated else None

    def forward(self, x, gate_fn=None):
        h = F.relu(self.bn(self.conv(x)))
        if gate_fn is not None:
            h = h * gate_fn(self, x)[:, :, None, None]
        return self.fc(h.mean(dim=(2, 3)))


def _inner(block) -> int:
    if isinstance(block, BasicBlock):
        return block.conv1.out_channels
    if isinstance(block, InvBlock):
        return block.expand.out_channels
    return block.conv.out_channels


class _Net(nn.Module):
    def __init__(self, cfg: dict, num_classes: int, gated: bool):
        super().__init__()
        self.cfg = {**cfg, "num_classes": num_classes}
        c, s = cfg["stem"]
        self.stem = nn.Sequential(nn.Conv2d(cfg["in_ch"], c, 3, s, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        blocks = []
        for kind, mid, out, stride in cfg["blocks"]:
            cls = BasicBlock if kind == "basic" else InvBlock
            blocks.append(cls(c, mid, out, stride, gated=gated))
            c = out
        self.blocks = nn.ModuleList(blocks)
        self.head = Head(c, cfg["head"], num_classes, gated=gated)

    def units(self) -> list[nn.Module]:
        """The prunable blocks in order (one gate each)."""
        return [*self.blocks, self.head]

    def widths(self) -> list[int]:
        return [_inner(u) for u in self.units()]


class GatedNet(_Net):
    """A dynamic path network. Modes: per-sample hard gates (default), fixed masks, prototype groups."""

    def __init__(self, cfg: dict, num_classes: int):
        super().__init__(cfg, num_classes, gated=True)
        self.fixed_masks: list[torch.Tensor] | None = None
        self.return_gates = False  # forward -> (logits, p_0, ..., p_k) for ONNX export
        self.noise = 1.0  # logistic (Gumbel-sigmoid) noise scale during training
        self.group_ids: torch.Tensor | None = None  # training in prototype mode
        self.group_ratio = 0.5
        for i, u in enumerate(self.units()):
            u.unit_index = i

    def _gate(self, block, x, probs_out: list):
        idx = block.unit_index
        logits = block.gate(x)
        probs = torch.sigmoid(logits)
        probs_out.append(probs)
        if self.fixed_masks is not None:
            return self.fixed_masks[idx].to(x.dtype).expand_as(probs)
        if self.training and self.group_ids is not None:
            return _group_gate(probs, self.group_ids, self.group_ratio)
        if self.training:
            u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
            soft = torch.sigmoid(logits + self.noise * (torch.log(u) - torch.log1p(-u)))
            return (soft > 0.5).to(soft.dtype) - soft.detach() + soft  # straight-through
        return (probs > 0.5).to(probs.dtype)

    def forward_with_probs(self, x):
        """(logits, [gate probabilities of every unit, each (N, C_k)])."""
        probs: list[torch.Tensor] = []

        def gate(block, inp):
            return self._gate(block, inp, probs)

        h = self.stem(x)
        for b in self.blocks:
            h = b(h, gate)
        return self.head(h, gate), probs

    def forward(self, x):
        logits, probs = self.forward_with_probs(x)
        if self.return_gates:
            return (logits, *probs)
        return logits


def _group_gate(probs, group_ids, ratio):
    """Prototype-mode gate: each sample uses the top-k mask of its group's mean gate probability."""
    out = torch.zeros_like(probs)
    k = max(1, int(math.ceil(ratio * probs.shape[1])))
    for g in torch.unique(group_ids):
        sel = group_ids == g
        proto = probs[sel].mean(0)
        mask = torch.zeros_like(proto)
        mask[torch.topk(proto, k).indices] = 1.0
        out[sel] = (mask - proto.detach() + proto).expand(int(sel.sum()), -1)
    return out


class StaticNet(_Net):
    """The gate-free network; built by :func:`edgekit.ppp.personalize.prune` with the kept channels."""

    def __init__(self, cfg: dict, num_classes: int, widths: list[int] | None = None):
        cfg = dict(cfg)
        if widths is not None:
            blocks = [(k, w, o, s) for (k, _m, o, s), w in zip(cfg["blocks"], widths[:-1])]
            cfg = {**cfg, "blocks": blocks, "head": widths[-1]}
        super().__init__(cfg, num_classes, gated=False)

    def forward(self, x):
        h = self.stem(x)
        for b in self.blocks:
            h = b(h)
        return self.head(h)


def build_gated(cfg: dict | str, num_classes: int) -> GatedNet:
    if isinstance(cfg, str):
        cfg = {"fashion": FASHION_CFG, "kws": KWS_CFG, "tiny": TINY_CFG}[cfg]
    return GatedNet(cfg, num_classes)
