"""Server-side aggregation for the asynchronous loop (Flower's FedAvg baseline: fedavg_baseline.py).

AsyncAggregator: a buffer of accepted updates; when K have arrived (or ``max_wait`` seconds
passed since the oldest) the core model is replaced by ``aggregate``.
  ClonedDistillation  teachers -> screened -> distilled together into the core (distill.py)
  FedBuff             staleness-weighted average of deltas (Nguyen et al., FedBuff)
``buffer`` is plain data (numpy states + metadata) so checkpoint.py can persist it.
Only floating-point entries are averaged or stepped; integer buffers (BatchNorm's
``num_batches_tracked``) stay the core's (models.merge_fixed).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from .models import State, float_keys, merge_fixed

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

    server_momentum = 0.0
    momentum: State | None = None  # server momentum buffer (checkpointed with the core)

    def momentum_step(self, step: State) -> State:
        """Heavy-ball server momentum: m <- beta * m + step; returns m (or step if beta = 0)."""
        if self.server_momentum <= 0:
            return step
        if self.momentum is None or set(self.momentum) != set(step):
            self.momentum = {k: np.zeros_like(v) for k, v in step.items()}
        self.momentum = {k: (self.server_momentum * self.momentum[k] + step[k]).astype(step[k].dtype)
                         for k in step}
        return self.momentum

    def aggregate(self, core: State, version: int) -> tuple[State, dict]:
        raise NotImplementedError


class FedBuff(AsyncAggregator):
    """w <- w + eta * m,  m <- beta * m + mean_i s(tau_i) * (w_i - w_base_i)   (beta=0: FedBuff)."""

    name = "fedbuff"

    def __init__(self, buffer_size: int = 5, server_lr: float = 1.0, server_momentum: float = 0.0,
                 **kw):
        super().__init__(buffer_size, **kw)
        self.server_lr, self.server_momentum = float(server_lr), float(server_momentum)

    def add(self, update: Update, history: dict[int, State]) -> None:
        base = history.get(update.base_version)
        if base is None:
            raise Rejected(f"base version {update.base_version} is no longer kept (too stale)")
        delta = {k: (update.state[k] - base[k]).astype(base[k].dtype) for k in float_keys(base)}
        self.buffer.append(Update(update.node_id, update.base_version, update.num_examples, delta,
                                  update.arrived, update.metrics))

    def aggregate(self, core: State, version: int) -> tuple[State, dict]:
        from .distill import staleness_weight

        s = [staleness_weight(version - u.base_version, self.staleness) for u in self.buffer]
        step = {k: sum(si * u.state[k] for si, u in zip(s, self.buffer)) / len(self.buffer)
                for k in float_keys(core)}
        m = self.momentum_step(step)
        new = merge_fixed({k: core[k] + self.server_lr * m[k] for k in m}, core)
        info = {"used": len(self.buffer), "dropped": 0}
        self.buffer = []
        return new, info


class ClonedDistillation(AsyncAggregator):
    """Buffered distillation of K teacher clones into the core model, with screening.

    1. screen the buffered teachers on the server validation set (drop below-chance teachers,
       outliers, and updates far larger per local step than the history of kept ones; at-chance
       clones step but do not teach); with ``refill`` a full buffer whose screening kept fewer
       than K teachers waits for more instead of being aggregated;
    2. start the student one server step along the kept teachers' staleness- and size-weighted,
       norm-clipped updates (init="delta"; FedDF-style start), optionally with server momentum;
       with ``cached_updates`` the step averages every node's latest kept update (MIFA);
    3. distil the teachers' ensemble into the student on the public unlabeled split;
    4. keep the distilled student only if it beats the undistilled start on validation
       (``distill_accept``) -- distillation can then never make a step worse on validation;
    5. step guard: keep the core if the step lowered validation accuracy by more than ``guard``
       below the median of the last ``guard_window`` accepted cores' validation accuracies.
    """

    name = "cloned"

    def __init__(self, model_fn: Callable, public_x: np.ndarray, val_x: np.ndarray,
                 val_y: np.ndarray, n_classes: int, buffer_size: int = 5, attend: float = 1.0,
                 init: str = "delta", screen: bool = True, temperature: float = 2.0,
                 epochs: int = 1, lr: float = 1e-4, seed: int = 0, guard: float = 0.03,
                 clip: bool = True, server_lr: float = 1.0, server_momentum: float = 0.0,
                 distill_accept: bool = True, example_weighting: bool = True,
                 teacher_window: int = 0, refill: bool = True, norm_history: int = 100,
                 lr_decay: float = 0.0, guard_window: int = 5, rate_weighting: bool = False,
                 combine: str = "mean", example_cap: float = 4.0, norm_per_step: bool = True,
                 batch_size: int = 32, cached_updates: bool = True, max_staleness: int = 20, **kw):
        super().__init__(buffer_size, **kw)
        # cached updates (MIFA, Gu et al. 2021): each core step averages every node's latest kept
        # update, age-discounted, not only the buffer's; a fast node then counts once per step
        # like any other, and a node that went offline still counts with its last update (until
        # it is ``max_staleness`` versions old). Off: the step averages the buffer only (FedBuff)
        self.cached_updates, self.max_staleness = bool(cached_updates), int(max_staleness)
        self.cache: dict[int, tuple[int, float, State]] = {}  # node -> (base version, weight, update)
        # how the teachers' predictions become the distillation target: "mean" (their weighted
        # mean, as in the paper) or "bayes" (per-class competence: each teacher's, and the
        # undistilled start's, prediction through its validation confusion matrix, multiplied;
        # distill.bayes_targets)
        if combine not in ("mean", "bayes"):
            raise ValueError(f"combine must be 'mean' or 'bayes', got {combine!r}")
        if combine == "bayes" and teacher_window > 0:
            raise ValueError("combine='bayes' needs the teachers themselves: use teacher_window=0")
        self.combine = combine
        # refill: a full buffer whose screening kept fewer than K teachers is not aggregated; the
        # kept ones wait for more, so every core step averages K screened updates (otherwise a
        # buffer with 3 attackers moves the core a full step along 1-2 non-IID updates)
        self.refill = bool(refill)
        # log update norms of the last ``norm_history`` kept teachers: the reference for the
        # update-norm screening rule (0: off; only the in-buffer update-size rule)
        self.norm_history = int(norm_history)
        # the screening rules on update size compare sizes per local SGD step: a clone's update
        # grows with the steps it took (ceil(examples / batch_size), epochs being the same for
        # all), so a node with 8x the data looked like an outlier among fast small nodes (seen:
        # the 3 largest of 12 digits nodes dropped 15 of 17 times on a clean run)
        self.norm_per_step, self.batch_size = bool(norm_per_step), max(1, int(batch_size))
        self.norm_hist: list[float] = []
        self.norm_nodes: list[int] = []  # the node of each norm_hist entry
        # server step schedule: server_lr / sqrt(1 + version / lr_decay) (0: constant)
        self.lr_decay = float(lr_decay)
        # step guard reference: median validation accuracy of the last ``guard_window`` accepted
        # cores (1: the current core only, the old rule)
        self.guard_window = int(guard_window)
        self.val_hist: list[float] = []
        # participation-rate correction: an update's weight is divided by how many updates its
        # node has contributed so far, so fast nodes do not dominate the objective (each node's
        # total influence ~ its examples, as in synchronous FedAvg)
        self.rate_weighting = bool(rate_weighting)
        self.node_counts: dict[int, int] = {}
        # buffered distillation over a sliding window of the last ``teacher_window`` kept teachers
        # (their soft labels on the public split are cached; 0: only the current buffer)
        self.teacher_window = int(teacher_window)
        self.window: list[tuple[int, float, object]] = []  # (base version, examples, soft labels)
        self.example_weighting = bool(example_weighting)
        # a node's example count is its own claim: weight it at most ``example_cap`` x the median
        # of the nodes' latest claims (0: trust the claims), so one node that reports 10**9
        # examples cannot outweigh the rest of the buffer
        if not example_cap >= 0:
            raise ValueError(f"example_cap must be >= 0, got {example_cap!r}")
        self.example_cap = float(example_cap)
        self.claims: dict[int, int] = {}  # node -> its latest reported example count
        self.guard, self.clip = float(guard), bool(clip)
        self.model_fn, self.public_x = model_fn, public_x
        self.val_x, self.val_y, self.n_classes = val_x, val_y, n_classes
        self.attend, self.init, self.screen = float(attend), init, screen
        self.temperature, self.epochs, self.lr, self.seed = temperature, int(epochs), lr, seed
        self.server_lr, self.server_momentum = float(server_lr), float(server_momentum)
        self.distill_accept = bool(distill_accept)
        if init not in ("core", "average", "delta"):
            raise ValueError(f"init must be 'core', 'average' or 'delta', got {init!r}")

    def add(self, update: Update, history: dict[int, State]) -> None:
        self.claims[int(update.node_id)] = int(update.num_examples)
        if self.init != "delta":
            return super().add(update, history)
        base = history.get(update.base_version)
        if base is None:
            raise Rejected(f"base version {update.base_version} is no longer kept (too stale)")
        self.node_counts[update.node_id] = self.node_counts.get(update.node_id, 0) + 1
        both = {f"t/{k}": v for k, v in update.state.items()}
        both.update({f"d/{k}": (update.state[k] - base[k]).astype(base[k].dtype) for k in float_keys(base)})
        self.buffer.append(Update(update.node_id, update.base_version, update.num_examples, both,
                                  update.arrived, update.metrics))

    def examples(self, u: Update, quiet: bool = False) -> float:
        """The example count an update is weighted by: its node's claim, capped at ``example_cap``
        x the median of the nodes' latest claims once 3 nodes have reported (the median is robust
        while fewer than half of the nodes lie)."""
        n = float(u.num_examples)
        if self.example_cap <= 0 or len(self.claims) < 3:
            return n
        cap = self.example_cap * float(np.median(list(self.claims.values())))
        if n > cap and not quiet:
            log.info("node %s claims %d examples; weighted as %d (%g x the median claim)",
                     u.node_id, u.num_examples, int(cap), self.example_cap)
        return min(n, cap)

    def _steps(self, u: Update) -> float:
        """The local SGD steps an update's size is divided by for screening (1: raw sizes). From
        the capped claim, so an inflated claim cannot excuse an update more than ``example_cap``
        x the median's steps."""
        return float(np.ceil(self.examples(u, quiet=True) / self.batch_size)) if self.norm_per_step else 1.0

    def _teacher(self, u: Update) -> State:
        return {k[2:]: v for k, v in u.state.items() if k.startswith("t/")} if self.init == "delta" \
            else u.state

    def norm_ref(self) -> tuple[float, float] | None:
        """(median, scaled MAD) over nodes of each node's median kept log update norm; None until
        10 kept updates from at least 3 nodes are known. Per node first: otherwise one fast node
        whose updates are small fills the history, and every other honest node's update looks
        like an outlier (seen: 263 of 296 drops on a clean 12-client digits run, core stalled)."""
        if self.norm_history <= 0 or len(self.norm_hist) < 10:
            return None
        nodes = self.norm_nodes[-len(self.norm_hist):]
        nodes = [-1] * (len(self.norm_hist) - len(nodes)) + nodes  # entries of old checkpoints
        by: dict[int, list[float]] = {}
        for n, v in zip(nodes, self.norm_hist):
            by.setdefault(n, []).append(v)
        if len(by) < 3:
            return None
        h = np.asarray([np.median(v) for v in by.values()])
        med = float(np.median(h))
        return med, float(1.4826 * np.median(np.abs(h - med)))

    def _val(self, state: State) -> float:
        from .models import accuracy, set_state

        return accuracy(set_state(self.model_fn(), state), self.val_x, self.val_y)

    def aggregate(self, core: State, version: int) -> tuple[State, dict]:
        from .distill import bayes_targets, distill, screen_teachers, staleness_weight
        from .models import get_state, set_state

        teachers = [set_state(self.model_fn(), self._teacher(u)) for u in self.buffer]
        unorms, cache_before = None, None
        if self.init == "delta":
            unorms = [float(np.sqrt(sum(float((v ** 2).sum()) for k, v in u.state.items()
                                        if k.startswith("d/")))) / self._steps(u) for u in self.buffer]
        if self.screen:
            sc = screen_teachers(teachers, self.val_x, self.val_y, self.n_classes, core_state=core,
                                 update_norms=unorms, norm_ref=self.norm_ref(),
                                 nodes=[u.node_id for u in self.buffer])
            for i, why in sc.dropped.items():
                log.info("screening: dropped teacher from node %s (base v%d): %s",
                         self.buffer[i].node_id, self.buffer[i].base_version, why)
            kept, mute = sc.kept, set(sc.at_chance)
        else:
            kept, mute = list(range(len(teachers))), set()
        info = {"used": len(kept), "dropped": len(teachers) - len(kept)}
        # a node whose latest update failed screening no longer has its older cached update
        # speak for it (an attacker caught now may have got an entry in earlier, e.g. while the
        # core was at chance); it counts again from its next kept update
        evict = {int(self.buffer[i].node_id) for i in range(len(self.buffer)) if i not in kept} \
            & set(self.cache)
        for n in evict:
            log.info("cache: node %s's cached update leaves (its latest update was dropped)", n)
            del self.cache[n]
        if evict:
            info["evicted"] = len(evict)
        if self.refill and self.screen and len(self.buffer) >= self.buffer_size \
                and len(kept) < self.buffer_size:
            # wait for more screened teachers (a max_wait-triggered partial buffer is used as is)
            self.buffer = [self.buffer[i] for i in kept]
            info.update(used=0, deferred=1)
            return core, info
        if not kept:
            self.buffer = []
            return core, info
        if unorms is not None and self.norm_history > 0:
            self.norm_hist = (self.norm_hist + [float(np.log(max(unorms[i], 1e-12))) for i in kept]
                              )[-self.norm_history:]
            self.norm_nodes = (self.norm_nodes + [int(self.buffer[i].node_id) for i in kept]
                               )[-self.norm_history:]
        rate = {i: 1.0 / max(1, self.node_counts.get(self.buffer[i].node_id, 1)) if self.rate_weighting
                else 1.0 for i in kept}
        ex = {i: self.examples(self.buffer[i]) for i in kept}
        w = [rate[i] * ex[i] * staleness_weight(
            version - self.buffer[i].base_version, self.staleness) for i in kept]
        tot = sum(w)
        if self.init == "delta":  # one (momentum) server step along the teachers' updates
            deltas = {i: {k: self.buffer[i].state[f"d/{k}"] for k in float_keys(core)} for i in kept}
            norms = {i: float(np.sqrt(sum(float((d ** 2).sum()) for d in deltas[i].values()))) for i in kept}
            by_node: dict[int, list[float]] = {}
            for i in kept:
                by_node.setdefault(int(self.buffer[i].node_id), []).append(norms[i])
            # norm clipping: no update outweighs the median over nodes (of each node's median), so
            # a fast node with several updates in the buffer does not set the clip alone
            cap = float(np.median([np.median(v) for v in by_node.values()]))
            scale = {i: min(1.0, cap / max(norms[i], 1e-12)) if self.clip else 1.0 for i in kept}
            # staleness is an absolute discount (as in FedBuff): sum_i s_i r_i d_i / sum_i r_i, with
            # r_i = examples (example_weighting) or 1; old updates shrink the step, not just its mix
            r = [rate[i] * (ex[i] if self.example_weighting else 1.0)
                 for i in kept]
            entries = [(self.buffer[i].base_version, ri, {k: scale[i] * d for k, d in deltas[i].items()})
                       for ri, i in zip(r, kept)]
            if self.cached_updates:
                cache_before = dict(self.cache)  # restored if the step guard rejects this step
                self.cache = {n: e for n, e in self.cache.items() if version - e[0] <= self.max_staleness}
                latest = {int(self.buffer[i].node_id): (i, e) for i, e in zip(kept, entries)}
                self.cache.update({n: e for n, (_, e) in latest.items()})
                entries = list(self.cache.values())
                # an at-chance clone steps once, in its buffer, but is not kept (nor is its node's
                # older entry, even if the guard rejects this step): it has nothing verified to
                # teach, and from the cache it would count at every later step (seen: a label
                # flipper whose one-class clones counted in every step of a digits run)
                for n in [n for n, (i, _) in latest.items() if i in mute]:
                    del self.cache[n]
                    cache_before.pop(n, None)
            coef = [ri * staleness_weight(version - b, self.staleness) for b, ri, _ in entries]
            tot = sum(ri for _, ri, _ in entries)  # once, not once per weight array
            step = {k: sum(c * d[k] for c, (_, _, d) in zip(coef, entries)) / tot for k in float_keys(core)}
            m = self.momentum_step(step)
            eta = self.server_lr / np.sqrt(1.0 + version / self.lr_decay) if self.lr_decay > 0 \
                else self.server_lr
            start = merge_fixed({k: core[k] + eta * m[k] for k in m}, core)
        elif self.init == "average":  # FedDF-style start: weighted average of the kept teachers
            avg = {k: sum(wi * self._teacher(self.buffer[i])[k] for wi, i in zip(w, kept)) / tot
                   for k in float_keys(core)}
            start = merge_fixed(avg, core)
        else:
            start = core
        buffer_meta = [(u.base_version, ex.get(i, float(u.num_examples))) for i, u in enumerate(self.buffer)]
        self.buffer = []
        new, v_new = start, None   # v_new: validation accuracy of ``new`` when already measured
        # the teachers: kept ones that know more than chance (an at-chance clone's step is used)
        t_list = [teachers[i] for i in kept if i not in mute]
        t_w = [wi for wi, i in zip(w, kept) if i not in mute]
        if self.epochs > 0 and self.teacher_window > 0:
            from .distill import soft_labels

            T = self.temperature
            self.window += [(buffer_meta[i][0], buffer_meta[i][1],
                             soft_labels(teachers[i], self.public_x, T)) for i in kept if i not in mute]
            self.window = self.window[-self.teacher_window:]
            t_list = [p for _, _, p in self.window]
            t_w = [n * staleness_weight(version - b, self.staleness) for b, n, _ in self.window]
        if mute:
            info["at-chance"] = len(mute)
        if self.epochs > 0 and t_list:
            student = set_state(self.model_fn(), start)
            retain = set_state(self.model_fn(), core)  # the core's own knowledge
            targets = None
            if self.combine == "bayes":  # the start is one more (weight-1) source of evidence
                targets = bayes_targets(t_list + [set_state(self.model_fn(), start)],
                                        [wi / (sum(t_w) / len(t_w)) for wi in t_w] + [1.0],
                                        self.public_x, self.val_x, self.val_y, self.n_classes,
                                        self.temperature)
            info.update(distill(student, t_list, t_w, self.public_x,
                                attend=self.attend, temperature=self.temperature, epochs=self.epochs,
                                lr=self.lr, seed=self.seed + version, retain=retain, targets=targets))
            distilled = merge_fixed(get_state(student), core)
            if self.distill_accept:  # distillation may only help (judged on validation, never test)
                v_start, v_dist = self._val(start), self._val(distilled)
                keep = v_dist > v_start
                info["distilled-kept" if keep else "distilled-discarded"] = 1
                new, v_new = (distilled, v_dist) if keep else (start, v_start)
            else:
                new = distilled
        if self.screen:  # step guard: never accept a core that got clearly worse on validation
            after = v_new if v_new is not None else self._val(new)
            if self.guard_window > 1 and self.val_hist:
                # compare with the median validation accuracy of the last accepted cores: one
                # lucky core (its validation score is an overestimate) must not block every later
                # step (seen: 17 honest 5-teacher steps in a row rejected after one such core)
                before = float(np.median(self.val_hist[-self.guard_window:]))  # [-1]: the core
            else:
                before = self._val(core)
            # tolerance: ``guard``, or 2 binomial standard errors if the validation set is small
            tol = max(self.guard, 2.0 * float(np.sqrt(max(before * (1 - before), 1e-4) / len(self.val_y))))
            if after < before - tol:
                log.info("step guard: kept the core (validation %.3f -> %.3f)", before, after)
                info["guarded"] = 1
                self.momentum = None  # a rejected direction should not keep pushing
                if cache_before is not None:
                    self.cache = cache_before  # nor should the rejected updates, from the cache
                return core, info
            self.val_hist = (self.val_hist + [after])[-max(self.guard_window, 1):]
        return new, info


def make_aggregator(method: str, **kw) -> AsyncAggregator:
    if method == "fedbuff":
        keep = {k: kw[k] for k in ("buffer_size", "server_lr", "server_momentum", "max_wait",
                                   "staleness") if k in kw}
        return FedBuff(**keep)
    if method == "cloned":
        return ClonedDistillation(**kw)
    raise ValueError(f"unknown async method {method!r}")


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
