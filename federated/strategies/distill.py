"""Buffered cloned distillation (arXiv:2010.10338): the core model (the *student*) learns from
several buffered teachers together on a public unlabeled split, with per-teacher weights
(staleness x examples). The student both *attends* to the teacher ensemble and *retains* its own
knowledge (its predictions before this step); ``attend`` in [0, 1] sets the balance:

    loss = T^2 * [ attend * KL(p_teachers || q) + (1 - attend) * KL(p_core_before || q) ]
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models import needs_pairs


@torch.no_grad()
def soft_labels(model: nn.Module, public_x: np.ndarray, temperature: float = 2.0) -> torch.Tensor:
    """A teacher's softened predictions on the public split."""
    return F.softmax(model.eval()(torch.from_numpy(np.asarray(public_x, np.float32))) / temperature, dim=1)


def distill(student: nn.Module, teachers: list[nn.Module], weights: list[float],
            public_x: np.ndarray, *, attend: float = 0.8, temperature: float = 2.0,
            epochs: int = 3, lr: float = 1e-3, batch_size: int = 64, seed: int = 0,
            retain: nn.Module | None = None) -> dict:
    """Distil the weighted teacher ensemble into ``student`` in place; returns loss stats.

    The retain target is ``retain``'s predictions (default: the student's before this step)."""
    if not 0.0 <= attend <= 1.0:
        raise ValueError(f"attend must be in [0, 1], got {attend}")
    x = torch.from_numpy(np.asarray(public_x, np.float32))
    w = torch.tensor(weights, dtype=torch.float32)
    w = w / w.sum()
    T = float(temperature)
    with torch.no_grad():
        p_teach = sum(wi * soft_labels(t, public_x, T) for wi, t in zip(w, teachers))
        p_self = F.softmax((retain if retain is not None else student).eval()(x) / T, dim=1)
    # SGD (momentum 0.9): its steps scale with the KL gradient, so a student that already agrees
    # with the teachers barely moves (a fresh Adam moved every weight by ~lr per step whatever the
    # gradient, which measurably damaged the core model on every update)
    opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    student.train()
    last, pairs = 0.0, needs_pairs(student)
    for _ in range(max(1, int(epochs))):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            b = perm[i:i + batch_size]
            if pairs and len(b) == 1 < len(x):  # BatchNorm cannot train on one example
                continue
            logq = F.log_softmax(student(x[b]) / T, dim=1)
            loss = attend * F.kl_div(logq, p_teach[b], reduction="batchmean")
            if attend < 1.0:
                loss = loss + (1.0 - attend) * F.kl_div(logq, p_self[b], reduction="batchmean")
            loss = loss * T * T
            opt.zero_grad()
            loss.backward()
            opt.step()
            last = loss.item()
    student.eval()
    return {"distill-loss": last}
