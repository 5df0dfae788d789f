"""Buffered cloned distillation (arXiv:2010.10338) and teacher screening (after FedDF).

Returned clones are *teachers*. The core model (the *student*) is distilled from several
buffered teachers together on a public unlabeled split, with per-teacher weights
(staleness x examples). The student both *attends* to the teacher ensemble and *retains* its own
knowledge (its predictions before this step); ``attend`` in [0, 1] sets the balance:

    loss = T^2 * [ attend * KL(p_teachers || q) + (1 - attend) * KL(p_core_before || q) ]

Screening on a small labeled server validation set drops teachers that are abnormal: below
chance, an accuracy outlier, or an update-size outlier (scaled / replaced models).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .models import State, float_keys, needs_pairs


def staleness_weight(tau: int, kind: str = "sqrt") -> float:
    """FedBuff / FedAsync staleness discount s(tau); tau = core version - base version."""
    tau = max(0, int(tau))
    if kind == "sqrt":
        return 1.0 / math.sqrt(1.0 + tau)
    if kind == "poly":
        return (1.0 + tau) ** -0.5 if tau < 4 else (1.0 + tau) ** -1.0
    if kind == "none":
        return 1.0
    raise ValueError(f"unknown staleness kind {kind!r}")


@dataclass
class Screening:
    kept: list[int]
    dropped: dict[int, str] = field(default_factory=dict)
    val_acc: list[float] = field(default_factory=list)
    # kept teachers that are no better than chance while the core is: their update is a
    # legitimate non-IID step, but they have nothing to teach (left out of distillation)
    at_chance: list[int] = field(default_factory=list)


def _robust_high(values: np.ndarray, k: float, floor: float, groups: list | None = None) -> np.ndarray:
    """Mask of values far above the median (median + k * max(scaled MAD, floor)). With ``groups``
    (each value's node) spanning at least 3 nodes, the median and MAD are taken over the nodes'
    medians: a fast node with several updates in one buffer must not define what is normal."""
    ref = np.asarray(values, dtype=float)
    if groups is not None and len(set(groups)) >= 3:
        by: dict = {}
        for g, v in zip(groups, ref):
            by.setdefault(g, []).append(v)
        ref = np.array([np.median(v) for v in by.values()])
    med = np.median(ref)
    mad = 1.4826 * np.median(np.abs(ref - med))
    return values > med + k * max(mad, floor)


@torch.no_grad()
def _predict(model: nn.Module, x: np.ndarray) -> np.ndarray:
    return model.eval()(torch.from_numpy(np.asarray(x, np.float32))).argmax(1).numpy()


def _supported(pred: np.ndarray, min_support: int = 5) -> list[int]:
    """The classes a model predicts at least ``min_support`` times (the ones its precision counts)."""
    return [c for c in np.unique(pred) if (pred == c).sum() >= min_support]


def _precision_of(pred: np.ndarray, y: np.ndarray) -> float:
    vals = [float((y[pred == c] == c).mean()) for c in _supported(pred)]
    return float(np.mean(vals)) if vals else float((pred == y).mean())


def _precision(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Mean precision over the classes the model predicts at least 5 times."""
    return _precision_of(_predict(model, x), np.asarray(y))


def screen_teachers(teachers: list[nn.Module], val_x: np.ndarray, val_y: np.ndarray,
                    n_classes: int, *, core_state: State | None = None, chance_margin: float = 0.02,
                    outlier_k: float = 4.0, update_norms: list[float] | None = None,
                    norm_ref: tuple[float, float] | None = None,
                    nodes: list | None = None) -> Screening:
    """Decide which teachers may teach. Never drops everything because of outlier rules alone.

    ``update_norms`` (each teacher's update size: ||clone - its base||, which the aggregator
    divides by the local SGD steps) with ``norm_ref`` = (median, scaled MAD) of the log sizes of
    previously *kept* updates: a teacher whose update is far larger than the
    accepted ones (log norm > median + outlier_k * max(MAD, 0.25), i.e. at least e^1 = 2.7x the
    median) is dropped whatever the rest of this buffer looks like. The in-buffer size rule
    below cannot do this when 2 of 4 teachers are attackers (the median is then theirs).
    ``nodes`` (each teacher's node): the in-buffer outlier rules take their median and MAD over
    the nodes' medians, so several updates of one fast node do not define what is normal."""
    vy = np.asarray(val_y)
    preds = [_predict(t, val_x) for t in teachers]  # one pass per model; every rule reads these
    accs = [float((p == vy).mean()) for p in preds]
    precs = [_precision_of(p, vy) for p in preds]
    chance = 1.0 / n_classes
    # A model's chance level of precision is the precision that a model ignoring its input would
    # get with the same predicted classes: their mean validation frequency ("blind" precision). A
    # clone that has so far learned only its partition's class prior predicts one class everywhere
    # and is *at* chance, even where that class is rare (precision < 1/K); a label flipper is
    # below it whatever it predicts.
    freq = np.bincount(vy, minlength=n_classes) / max(1, len(vy))

    def blind(pred: np.ndarray) -> float:  # over the classes _precision_of counts
        cls = _supported(pred)
        return float(freq[cls].mean()) if cls else float(freq[pred].mean())

    # Only clearly-below-chance teachers (label flippers) are dropped for their precision; random
    # models are caught by the update-size rules. While the core is not measurably better than
    # chance (precision <= 1/K + margin, or within 2 binomial standard errors of its own blind
    # precision) a clone of it trained briefly need not be either, so at-chance clones teach;
    # afterwards they are marked ``at_chance``. (With a 1/K drop rule, a tiny-data run stalled:
    # every clone of a weak core was dropped, the core never moved.)
    weak = False
    if core_state is not None:
        core = copy.deepcopy(teachers[0]).eval()
        core.load_state_dict({k: torch.from_numpy(np.asarray(v).copy()) for k, v in core_state.items()})
        core_pred = _predict(core, val_x)
        cp, cb = _precision_of(core_pred, vy), blind(core_pred)
        noise = 2.0 * math.sqrt(max(cb * (1.0 - cb), 1e-4) / max(1, len(vy)))
        weak = cp <= chance + chance_margin or cp - cb <= max(chance_margin, noise)
    dropped: dict[int, str] = {}
    if update_norms is not None and norm_ref is not None:
        med, mad = norm_ref
        for i, n in enumerate(update_norms):
            if math.log(max(n, 1e-12)) > med + outlier_k * max(mad, 0.25):
                dropped[i] = (f"update norm {n:.3g} is far above the accepted updates' "
                              f"(median {math.exp(med):.3g})")
    at_chance = []
    for i, (a, pr) in enumerate(zip(accs, precs)):
        if i in dropped:
            continue
        # a non-IID teacher that knows 2 classes has ~20% accuracy but its predictions are
        # still mostly right; label flippers are wrong whatever they predict: below chance in both
        # senses, 1/K and this teacher's own blind precision. A clone that predicts its
        # partition's one class everywhere is *at* its blind precision: an honest update from a
        # skewed partition (dropping those cost 1.7 points on 20 clean 12-client digits runs), but
        # once the core is better than chance it has nothing to teach.
        bar = min(chance, blind(preds[i])) - chance_margin
        if pr <= bar:
            dropped[i] = (f"validation precision {pr:.3f} (accuracy {a:.3f}) is below chance "
                          f"({bar + chance_margin:.3f})")
        elif not weak and pr <= chance + chance_margin:
            at_chance.append(i)
    alive = [i for i in range(len(teachers)) if i not in dropped]
    if len(alive) >= 3:
        groups = [nodes[i] for i in alive] if nodes is not None else None
        acc_gap = np.array([max(accs) - accs[i] for i in alive])
        for j in np.flatnonzero(_robust_high(acc_gap, outlier_k, 0.05, groups)):
            dropped[alive[j]] = f"validation accuracy {accs[alive[j]]:.3f} is an outlier"
        dist, what = None, ""
        if update_norms is not None:  # the caller's measure of each update's size
            dist, what = [math.log(max(update_norms[i], 1e-12)) for i in alive], "update is far larger than"
        elif core_state is not None:
            dist, what = [], "weights are far from"
            for i in alive:
                sd = teachers[i].state_dict()
                dist.append(math.log(1e-12 + math.sqrt(sum(
                    float(((sd[k].numpy() - core_state[k]) ** 2).sum()) for k in float_keys(core_state)))))
        if dist is not None:
            for j in np.flatnonzero(_robust_high(np.array(dist), outlier_k, 0.25, groups)):
                dropped.setdefault(alive[j], f"{what} the other teachers' (outlier)")
    kept = [i for i in range(len(teachers)) if i not in dropped]
    return Screening(kept=kept, dropped=dropped, val_acc=accs, at_chance=[i for i in at_chance if i in kept])


@torch.no_grad()
def soft_labels(model: nn.Module, public_x: np.ndarray, temperature: float = 2.0) -> torch.Tensor:
    """A teacher's softened predictions on the public split (cached by the aggregator)."""
    return F.softmax(model.eval()(torch.from_numpy(np.asarray(public_x, np.float32))) / temperature, dim=1)


def distill(student: nn.Module, teachers: list, weights: list[float],
            public_x: np.ndarray, *, attend: float = 0.8, temperature: float = 2.0,
            epochs: int = 3, lr: float = 1e-3, batch_size: int = 64, seed: int = 0,
            retain: nn.Module | None = None, optimizer: str = "sgd",
            targets: torch.Tensor | None = None) -> dict:
    """Distil the weighted teacher ensemble into ``student`` in place; returns loss stats.

    ``teachers`` are modules or precomputed :func:`soft_labels` (same temperature); ``targets``
    (e.g. :func:`bayes_targets`) replaces their weighted mean as the soft labels.
    The retain target is ``retain``'s predictions (default: the student's before this step)."""
    if not 0.0 <= attend <= 1.0:
        raise ValueError(f"attend must be in [0, 1], got {attend}")
    x = torch.from_numpy(np.asarray(public_x, np.float32))
    w = torch.tensor(weights, dtype=torch.float32)
    w = w / w.sum()
    T = float(temperature)
    with torch.no_grad():
        p_teach = targets if targets is not None else sum(
            wi * (t if isinstance(t, torch.Tensor) else soft_labels(t, public_x, T))
            for wi, t in zip(w, teachers))
        p_self = F.softmax((retain if retain is not None else student).eval()(x) / T, dim=1)
    # SGD (momentum 0.9) by default: its steps scale with the KL gradient, so a student that
    # already agrees with the teachers barely moves. A fresh Adam moves every weight by ~lr per
    # step whatever the gradient, which measurably damaged the core model on every update.
    if optimizer == "sgd":
        opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9)
    elif optimizer == "adam":
        opt = torch.optim.Adam(student.parameters(), lr=lr)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
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


@torch.no_grad()
def bayes_targets(models: list[nn.Module], weights: list[float], public_x: np.ndarray,
                  val_x: np.ndarray, val_y: np.ndarray, n_classes: int,
                  temperature: float = 2.0) -> torch.Tensor:
    """Distillation targets from a per-class-competence (Bayesian) combination of ``models``.

    A non-IID teacher is competent on the classes it saw and confidently wrong elsewhere, so a
    plain mean of the teachers' predictions is pulled towards each teacher's own classes. Here
    each model's prediction passes through its confusion matrix C[y, y'] = P(predicts y' | true y)
    (estimated on the labeled validation split, Laplace 1), and the models' likelihoods multiply
    (independent-evidence product, each raised to its normalised weight x n):

        log p(y | x) = log prior(y) + sum_m w_m log sum_y' C_m[y, y'] p_m(y' | x)

    so a teacher that never predicts a class correctly carries no evidence about it. The result is
    softened with ``temperature`` (p^(1/T), renormalised) to match the students' T-softmax."""
    vx = torch.from_numpy(np.asarray(val_x, np.float32))
    px = torch.from_numpy(np.asarray(public_x, np.float32))
    vy = torch.from_numpy(np.asarray(val_y, np.int64))
    w = torch.tensor(weights, dtype=torch.float64)
    w = w / w.sum() * len(weights)  # mean weight 1: stale teachers count less, the total stays n
    counts = torch.bincount(vy, minlength=n_classes).double()
    logp = torch.log((counts + 1.0) / (counts.sum() + n_classes))  # validation class prior
    for wm, m in zip(w, models):
        m.eval()
        pred = m(vx).argmax(1)
        conf = torch.ones(n_classes, n_classes, dtype=torch.float64)  # Laplace 1
        conf.index_put_((vy, pred), torch.ones(len(vy), dtype=torch.float64), accumulate=True)
        conf = conf / conf.sum(1, keepdim=True)
        p = F.softmax(m(px), dim=1).double()  # (N, C) over predicted labels
        logp = logp + wm * torch.log(p @ conf.T + 1e-12)  # (N, C) over true labels
    logp = logp / float(temperature)
    return F.softmax(logp, dim=1).float()
