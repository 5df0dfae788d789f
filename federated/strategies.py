"""Server-side aggregation for the asynchronous loop, plus Flower's FedAvg for the baseline.

AsyncAggregator: a buffer of accepted updates; when K have arrived (or ``max_wait`` seconds
passed since the oldest) the core model is replaced by ``aggregate``.
  ClonedDistillation  teachers -> screened -> distilled together into the core (distill.py)
  FedBuff             staleness-weighted average of deltas (Nguyen et al., FedBuff)
``buffer`` is plain data (numpy states + metadata) so checkpoint.py can persist it.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from .models import State

log = logging.getLogger("edgekit.federated")


@dataclass
class Update:
    node_id: int
    base_version: int
    num_examples: int
    state: State  # full clone (distillation) or delta (FedBuff)
    arrived: float = 0.0
    metrics: dict = field(default_factory=dict)

    def meta(self) -> dict:
        d = asdict(self)
        d.pop("state")
        return d


class Rejected(Exception):
    """An update that cannot be used; the message is the logged reason."""


class AsyncAggregator:
    name = "base"

    def __init__(self, buffer_size: int = 5, max_wait: float | None = None,
                 staleness: str = "sqrt"):
        self.buffer_size = int(buffer_size)
        self.max_wait = max_wait
        self.staleness = staleness
        self.buffer: list[Update] = []

    def add(self, update: Update, history: dict[int, State]) -> None:
        self.buffer.append(update)

    def ready(self, now: float) -> bool:
        if len(self.buffer) >= self.buffer_size:
            return True
        return bool(self.buffer) and self.max_wait is not None and \
            now - self.buffer[0].arrived >= self.max_wait

    def aggregate(self, core: State, version: int) -> tuple[State, dict]:
        raise NotImplementedError


class FedBuff(AsyncAggregator):
    """w <- w + eta * mean_i s(tau_i) * (w_i - w_base_i)."""

    name = "fedbuff"

    def __init__(self, buffer_size: int = 5, server_lr: float = 1.0, **kw):
        super().__init__(buffer_size, **kw)
        self.server_lr = float(server_lr)

    def add(self, update: Update, history: dict[int, State]) -> None:
        base = history.get(update.base_version)
        if base is None:
            raise Rejected(f"base version {update.base_version} is no longer kept (too stale)")
        delta = {k: (update.state[k] - base[k]).astype(base[k].dtype) for k in base}
        self.buffer.append(Update(update.node_id, update.base_version, update.num_examples, delta,
                                  update.arrived, update.metrics))

    def aggregate(self, core: State, version: int) -> tuple[State, dict]:
        from .distill import staleness_weight

        s = [staleness_weight(version - u.base_version, self.staleness) for u in self.buffer]
        new = {k: (v + self.server_lr * sum(si * u.state[k] for si, u in zip(s, self.buffer))
                   / len(self.buffer)).astype(v.dtype) for k, v in core.items()}
        info = {"used": len(self.buffer), "dropped": 0}
        self.buffer = []
        return new, info


class ClonedDistillation(AsyncAggregator):
    """Buffered distillation of K teacher clones into the core model, with screening."""

    name = "cloned"

    def __init__(self, model_fn: Callable, public_x: np.ndarray, val_x: np.ndarray,
                 val_y: np.ndarray, n_classes: int, buffer_size: int = 5, attend: float = 1.0,
                 init: str = "delta", screen: bool = True, temperature: float = 2.0,
                 epochs: int = 1, lr: float = 1e-4, seed: int = 0, guard: float = 0.03,
                 clip: bool = True, **kw):
        super().__init__(buffer_size, **kw)
        self.guard, self.clip = float(guard), bool(clip)
        self.model_fn, self.public_x = model_fn, public_x
        self.val_x, self.val_y, self.n_classes = val_x, val_y, n_classes
        self.attend, self.init, self.screen = float(attend), init, screen
        self.temperature, self.epochs, self.lr, self.seed = temperature, epochs, lr, seed
        if init not in ("core", "average", "delta"):
            raise ValueError(f"init must be 'core', 'average' or 'delta', got {init!r}")

    def add(self, update: Update, history: dict[int, State]) -> None:
        if self.init != "delta":
            return super().add(update, history)
        base = history.get(update.base_version)
        if base is None:
            raise Rejected(f"base version {update.base_version} is no longer kept (too stale)")
        both = {f"t/{k}": v for k, v in update.state.items()}
        both.update({f"d/{k}": (update.state[k] - base[k]).astype(base[k].dtype) for k in base})
        self.buffer.append(Update(update.node_id, update.base_version, update.num_examples, both,
                                  update.arrived, update.metrics))

    def _teacher(self, u: Update) -> State:
        return {k[2:]: v for k, v in u.state.items() if k.startswith("t/")} if self.init == "delta" \
            else u.state

    def aggregate(self, core: State, version: int) -> tuple[State, dict]:
        from .distill import distill, screen_teachers, staleness_weight
        from .models import get_state, set_state

        teachers = [set_state(self.model_fn(), self._teacher(u)) for u in self.buffer]
        if self.screen:
            sc = screen_teachers(teachers, self.val_x, self.val_y, self.n_classes, core_state=core)
            for i, why in sc.dropped.items():
                log.info("screening: dropped teacher from node %s (base v%d): %s",
                         self.buffer[i].node_id, self.buffer[i].base_version, why)
            kept = sc.kept
        else:
            kept = list(range(len(teachers)))
        info = {"used": len(kept), "dropped": len(teachers) - len(kept)}
        if not kept:
            self.buffer = []
            return core, info
        w = [self.buffer[i].num_examples * staleness_weight(version - self.buffer[i].base_version,
                                                           self.staleness) for i in kept]
        student = set_state(self.model_fn(), core)
        tot = sum(w)
        if self.init == "delta":  # start one staleness-weighted step along the teachers' updates
            deltas = {i: {k: self.buffer[i].state[f"d/{k}"] for k in core} for i in kept}
            norms = {i: float(np.sqrt(sum(float((d ** 2).sum()) for d in deltas[i].values()))) for i in kept}
            cap = float(np.median(list(norms.values())))  # norm clipping: no update outweighs the median
            scale = {i: min(1.0, cap / max(norms[i], 1e-12)) if self.clip else 1.0 for i in kept}
            start = {k: (core[k] + self.attend * sum(wi * scale[i] * deltas[i][k]
                                                     for wi, i in zip(w, kept)) / tot).astype(core[k].dtype)
                     for k in core}
            set_state(student, start)
            retain = set_state(self.model_fn(), core)
        elif self.init == "average":  # FedDF-style start: weighted average of the kept teachers
            avg = {k: sum(wi * self._teacher(self.buffer[i])[k] for wi, i in zip(w, kept)) / tot
                   for k in core}
            # the student starts between the core (retain) and the teachers' average (attend)
            start = {k: (self.attend * avg[k] + (1 - self.attend) * core[k]).astype(core[k].dtype)
                     for k in core}
            set_state(student, start)
            retain = set_state(self.model_fn(), core)
        else:
            retain = None
        stats = distill(student, [teachers[i] for i in kept], w, self.public_x, attend=self.attend,
                        temperature=self.temperature, epochs=self.epochs, lr=self.lr,
                        seed=self.seed + version, retain=retain)
        info.update(stats)
        self.buffer = []
        if self.screen:  # step guard: never accept a core that got clearly worse on validation
            from .models import accuracy

            before = accuracy(set_state(self.model_fn(), core), self.val_x, self.val_y)
            after = accuracy(student, self.val_x, self.val_y)
            if after < before - self.guard:
                log.info("step guard: kept the core (validation %.3f -> %.3f)", before, after)
                info["guarded"] = 1
                return core, info
        return get_state(student), info


def make_aggregator(method: str, **kw) -> AsyncAggregator:
    if method == "fedbuff":
        keep = {k: kw[k] for k in ("buffer_size", "server_lr", "max_wait", "staleness") if k in kw}
        kw.pop("guard", None)
        kw.pop("clip", None)
        return FedBuff(**keep)
    if method == "cloned":
        kw.pop("server_lr", None)
        return ClonedDistillation(**kw)
    raise ValueError(f"unknown async method {method!r}")


def flower_fedavg(**kw):
    """Flower's own FedAvg (flwr.serverapp.strategy), with replies of the wrong shape dropped
    (and the reason logged) before Flower aggregates, so one bad client cannot crash a round."""
    from flwr.serverapp.strategy import FedAvg

    from .models import record_to_state, shape_mismatch

    class CheckedFedAvg(FedAvg):
        reference: State | None = None

        def aggregate_train(self, server_round, replies):
            good = []
            for m in replies:
                if not m.has_error():
                    why = _reply_problem(m, self.reference, record_to_state, shape_mismatch)
                    if why:
                        log.warning("fedavg: rejected reply from node %s: %s",
                                    m.metadata.src_node_id, why)
                        continue
                good.append(m)
            return super().aggregate_train(server_round, good)

    return CheckedFedAvg(fraction_evaluate=0.0, min_available_nodes=1, min_train_nodes=1, **kw)


def _reply_problem(msg, reference, record_to_state, shape_mismatch) -> str | None:
    c = msg.content
    if "arrays" not in c.array_records or "metrics" not in c.metric_records:
        return "reply lacks the 'arrays' or 'metrics' record"
    m = c.metric_records["metrics"]
    if int(m.get("num-examples", 0)) <= 0:
        return "reply reports no training examples"
    if reference is not None:
        return shape_mismatch(record_to_state(c.array_records["arrays"]), reference)
    return None
