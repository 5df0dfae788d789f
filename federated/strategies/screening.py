"""Teacher screening on the server's small labeled validation split (after FedDF).

A buffered clone is a *teacher*. Screening drops teachers that are abnormal: below chance (label
flippers), an accuracy outlier, or an update-size outlier (scaled or replaced models), comparing
update sizes with the history of kept updates (the strategy's ``norm_ref``) and within the buffer.
Clones at chance (a one-class partition's honest clone) are kept for the server step but, once the
core is better than chance, do not teach. Never drops everything because of outlier rules alone.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..state import State


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
    divides by the local SGD steps; default: the distance of each teacher from ``core_state``)
    with ``norm_ref`` = (median, scaled MAD) of the log sizes of previously *kept* updates: a
    teacher whose update is far larger than the accepted ones (log norm > median + outlier_k *
    max(MAD, 0.25), i.e. at least e^1 = 2.7x the median) is dropped whatever the rest of this
    buffer looks like. The in-buffer size rule cannot do this when 2 of 4 teachers are attackers
    (the median is then theirs). ``nodes`` (each teacher's node): the in-buffer outlier rules take
    their median and MAD over the nodes' medians, so several updates of one fast node do not
    define what is normal."""
    vy = np.asarray(val_y)
    preds = [_predict(t, val_x) for t in teachers]  # one pass per model; every rule reads these
    accs = [float((p == vy).mean()) for p in preds]
    if update_norms is None and core_state is not None:
        update_norms = [_distance(t, core_state) for t in teachers]
    dropped: dict[int, str] = {}
    if update_norms is not None and norm_ref is not None:
        med, mad = norm_ref
        for i, n in enumerate(update_norms):
            if math.log(max(n, 1e-12)) > med + outlier_k * max(mad, 0.25):
                dropped[i] = (f"update norm {n:.3g} is far above the accepted updates' "
                              f"(median {math.exp(med):.3g})")
    weak = core_state is not None and _core_at_chance(teachers[0], core_state, val_x, vy, n_classes, chance_margin)
    at_chance = _chance_rule(preds, accs, vy, n_classes, chance_margin, weak, dropped)
    alive = [i for i in range(len(teachers)) if i not in dropped]
    if len(alive) >= 3:
        groups = [nodes[i] for i in alive] if nodes is not None else None
        acc_gap = np.array([max(accs) - accs[i] for i in alive])
        for j in np.flatnonzero(_robust_high(acc_gap, outlier_k, 0.05, groups)):
            dropped[alive[j]] = f"validation accuracy {accs[alive[j]]:.3f} is an outlier"
        if update_norms is not None:
            dist = [math.log(max(update_norms[i], 1e-12)) for i in alive]
            for j in np.flatnonzero(_robust_high(np.array(dist), outlier_k, 0.25, groups)):
                dropped.setdefault(alive[j], "update is far larger than the other teachers' (outlier)")
    kept = [i for i in range(len(teachers)) if i not in dropped]
    return Screening(kept=kept, dropped=dropped, val_acc=accs, at_chance=[i for i in at_chance if i in kept])


def _blind(pred: np.ndarray, freq: np.ndarray) -> float:
    """A model's chance level of precision: the precision a model ignoring its input would get with
    the same predicted classes, i.e. their mean validation frequency (over the classes
    _precision_of counts). A clone that has so far learned only its partition's class prior
    predicts one class everywhere and is *at* chance, even where that class is rare (precision
    < 1/K); a label flipper is below it whatever it predicts."""
    cls = _supported(pred)
    return float(freq[cls].mean()) if cls else float(freq[pred].mean())


def _core_at_chance(like: nn.Module, core_state: State, val_x, vy, n_classes: int, margin: float) -> bool:
    """Is the core not measurably better than chance (precision <= 1/K + margin, or within 2
    binomial standard errors of its own blind precision)? Then a clone of it trained briefly need
    not be either, and at-chance clones teach. (With a 1/K drop rule, a tiny-data run stalled:
    every clone of a weak core was dropped, the core never moved.)"""
    core = copy.deepcopy(like).eval()
    core.load_state_dict({k: torch.from_numpy(np.asarray(v).copy()) for k, v in core_state.items()})
    core_pred = _predict(core, val_x)
    freq = np.bincount(vy, minlength=n_classes) / max(1, len(vy))
    cp, cb = _precision_of(core_pred, vy), _blind(core_pred, freq)
    noise = 2.0 * math.sqrt(max(cb * (1.0 - cb), 1e-4) / max(1, len(vy)))
    return cp <= 1.0 / n_classes + margin or cp - cb <= max(margin, noise)


def _chance_rule(preds, accs, vy, n_classes: int, margin: float, weak: bool, dropped: dict) -> list[int]:
    """Drop (into ``dropped``) the teachers below chance; return those at chance.

    Only clearly-below-chance teachers (label flippers) are dropped for their precision; random
    models are caught by the update-size rules. A non-IID teacher that knows 2 classes has ~20%
    accuracy but its predictions are still mostly right; label flippers are wrong whatever they
    predict: below chance in both senses, 1/K and this teacher's own blind precision. A clone that
    predicts its partition's one class everywhere is *at* its blind precision: an honest update
    from a skewed partition (dropping those cost 1.7 points on 20 clean 12-client digits runs),
    but once the core is better than chance (not ``weak``) it has nothing to teach."""
    chance = 1.0 / n_classes
    freq = np.bincount(vy, minlength=n_classes) / max(1, len(vy))
    at_chance = []
    for i, (a, p) in enumerate(zip(accs, preds)):
        if i in dropped:
            continue
        pr = _precision_of(p, vy)
        bar = min(chance, _blind(p, freq)) - margin
        if pr <= bar:
            dropped[i] = (f"validation precision {pr:.3f} (accuracy {a:.3f}) is below chance "
                          f"({bar + margin:.3f})")
        elif not weak and pr <= chance + margin:
            at_chance.append(i)
    return at_chance


def _distance(teacher: nn.Module, core_state: State) -> float:
    sd = teacher.state_dict()
    return math.sqrt(sum(float(((sd[k].numpy() - np.asarray(v)) ** 2).sum())
                         for k, v in core_state.items() if np.asarray(v).dtype.kind == "f"))
