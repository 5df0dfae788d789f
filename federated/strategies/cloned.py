"""Buffered cloned distillation: K teacher clones, screened, then distilled together into the core.

1. screen the buffered teachers on the server validation set (screening.py: drop below-chance
   teachers, outliers, and updates far larger per local step than the history of kept ones;
   at-chance clones step but do not teach); with ``refill`` a full buffer whose screening kept
   fewer than K teachers waits for more instead of being aggregated;
2. start the student one server step along the kept teachers' staleness- and size-weighted,
   norm-clipped updates (a FedDF-style start); with ``cached_updates`` the step averages every
   node's latest kept update (MIFA, Gu et al. 2021);
3. distil the teachers' ensemble into the student on the public unlabeled split (distill.py);
4. keep the distilled student only if it beats the undistilled start on validation
   (``distill_accept``) -- distillation can then never make a step worse on validation;
5. step guard: keep the core if the step lowered validation accuracy by more than ``guard``
   below the median of the last ``guard_window`` accepted cores' validation accuracies.
torch is imported when a step is aggregated (the config is read without it).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..settings import at_least, non_negative, positive, setting, unit
from ..state import State, float_keys, merge_fixed
from .base import BufferedConfig, Strategy, Update, check_arrays, delta, nested, staleness_weight

log = logging.getLogger("edgekit.federated")


@dataclass
class ClonedConfig(BufferedConfig):
    attend: float = setting(1.0, "distillation: weight on the teachers vs. retaining the core (paper: amplify)",
                            check=unit())
    screen: bool = setting(True, "teacher screening on the server validation set (+ step guard)")
    clip: bool = setting(True, "clip each update to the median over nodes of their median update norm")
    guard: float = setting(0.03, "keep the core if a step lowers validation accuracy by more than this", check=unit())
    distill_epochs: int = setting(1, "passes over the public split per distillation (0: none)", check=at_least(0))
    distill_lr: float = setting(0.05, "distillation SGD (momentum 0.9) learning rate", check=positive())
    temperature: float = setting(2.0, "distillation softmax temperature", check=positive())
    example_cap: float = setting(4.0, "a claimed example count counts at most this x the median claim (0: off)",
                                 check=non_negative(" (0: off)"))
    distill_accept: bool = setting(True, "keep the distilled core only if it beats the undistilled start on val")
    refill: bool = setting(True, "a buffer is aggregated only once K teachers passed screening")
    norm_history: int = setting(100, "screen update norms against the last N kept ones (0: off)", check=at_least(0))
    norm_per_step: bool = setting(True, "screen update sizes per local SGD step (ceil(examples/batch))")
    guard_window: int = setting(5, "the step guard compares with the median val of the last N cores",
                                check=at_least(0))
    cached_updates: bool = setting(True, "a step averages every node's latest kept update (MIFA)")


class ClonedDistillation(Strategy):
    """Buffered distillation of K teacher clones into the core model, with screening."""

    name = "cloned"
    Config = ClonedConfig

    def __init__(self, config: ClonedConfig, ctx):
        super().__init__(config, ctx)
        # cached updates: node -> (base version, weight, clipped update); an entry leaves once it
        # is ``max_staleness`` versions old, or when its node's latest update fails screening
        self.cache: dict[int, tuple[int, float, State]] = {}
        self.norm_hist: list[float] = []  # log update norms (per step) of the last kept teachers
        self.norm_nodes: list[int] = []  # the node of each norm_hist entry
        self.val_hist: list[float] = []  # validation accuracies of the last accepted cores
        # a node's example count is its own claim: it weighs at most ``example_cap`` x the median of
        # the nodes' latest claims, so one node that reports 10**9 examples cannot outweigh the rest
        self.claims: dict[int, int] = {}

    # ------------------------------------------------------------------ buffer
    def add(self, update: Update, history: dict[int, State]) -> None:
        self.claims[int(update.node_id)] = int(update.num_examples)
        both = {f"t/{k}": v for k, v in update.state.items()}
        both.update({f"d/{k}": v for k, v in delta(update, history).items()})
        self.buffer.append(Update(update.node_id, update.base_version, update.num_examples, both,
                                  update.arrived, update.metrics))

    def examples(self, u: Update, quiet: bool = False) -> float:
        """The example count an update is weighted by: its node's claim, capped at ``example_cap``
        x the median of the nodes' latest claims once 3 nodes have reported (the median is robust
        while fewer than half of the nodes lie)."""
        n, cap_x = float(u.num_examples), self.config.example_cap
        if cap_x <= 0 or len(self.claims) < 3:
            return n
        cap = cap_x * float(np.median(list(self.claims.values())))
        if n > cap and not quiet:
            log.info("node %s claims %d examples; weighted as %d (%g x the median claim)",
                     u.node_id, u.num_examples, int(cap), cap_x)
        return min(n, cap)

    def _steps(self, u: Update) -> float:
        """The local SGD steps an update's size is divided by for screening (1: raw sizes): a clone's
        update grows with the steps it took. From the capped claim, so an inflated claim cannot
        excuse an update more than ``example_cap`` x the median's steps."""
        if not self.config.norm_per_step:
            return 1.0
        return float(np.ceil(self.examples(u, quiet=True) / max(1, int(self.ctx.batch_size))))

    def norm_ref(self) -> tuple[float, float] | None:
        """(median, scaled MAD) over nodes of each node's median kept log update norm: the reference
        of the update-norm screening rule; None while it is off, or until 10 kept updates from at
        least 3 nodes are known. Per node first: otherwise one fast node whose updates are small
        fills the history, and every other honest node's update looks like an outlier (seen: 263
        of 296 drops on a clean 12-client digits run, core stalled)."""
        if self.config.norm_history <= 0 or len(self.norm_hist) < 10:
            return None
        by: dict[int, list[float]] = {}
        for n, v in zip(self.norm_nodes, self.norm_hist):
            by.setdefault(n, []).append(v)
        if len(by) < 3:
            return None
        h = np.asarray([np.median(v) for v in by.values()])
        med = float(np.median(h))
        return med, float(1.4826 * np.median(np.abs(h - med)))

    def _val(self, state: State) -> float:
        from ..models import accuracy, set_state

        c = self.ctx
        return accuracy(set_state(c.model_fn(), state), c.val_x, c.val_y)

    # ------------------------------------------------------------------ aggregation
    def aggregate(self, core: State, version: int) -> tuple[State, dict]:
        from ..models import set_state

        teachers = [set_state(self.ctx.model_fn(), nested(u.state, "t/")) for u in self.buffer]
        unorms = [float(np.sqrt(sum(float((v ** 2).sum()) for k, v in u.state.items()
                                    if k.startswith("d/")))) / self._steps(u) for u in self.buffer]
        kept, mute, info = self._screen(teachers, unorms, core)
        if self.config.refill and self.config.screen and len(self.buffer) >= self.config.buffer_size \
                and len(kept) < self.config.buffer_size:
            # wait for more screened teachers (a max-wait-triggered partial buffer is used as is)
            self.buffer = [self.buffer[i] for i in kept]
            info.update(used=0, deferred=1)
            return core, info
        if not kept:
            self.buffer = []
            return core, info
        if self.config.norm_history > 0:
            self.norm_hist = (self.norm_hist + [float(np.log(max(unorms[i], 1e-12))) for i in kept]
                              )[-self.config.norm_history:]
            self.norm_nodes = (self.norm_nodes + [int(self.buffer[i].node_id) for i in kept]
                               )[-self.config.norm_history:]
        ex = {i: self.examples(self.buffer[i]) for i in kept}
        w = [ex[i] * staleness_weight(version - self.buffer[i].base_version, self.config.staleness) for i in kept]
        start, cache_before = self._server_step(core, version, kept, ex, mute)
        self.buffer = []
        if mute:
            info["at-chance"] = len(mute)
        new, v_new = self._distill(core, start, version,
                                   [teachers[i] for i in kept if i not in mute],
                                   [wi for wi, i in zip(w, kept) if i not in mute], info)
        if self.config.screen and not self._guard_passes(core, new, v_new, info):
            if cache_before is not None:
                self.cache = cache_before  # the rejected updates leave the cache too
            return core, info
        return new, info

    def _screen(self, teachers: list, unorms: list[float], core: State) -> tuple[list[int], set, dict]:
        """Screening (kept, at-chance, counters); evicts the cached update of every node whose latest
        update was dropped (an attacker caught now may have got an entry in earlier, e.g. while the
        core was at chance); it counts again from its next kept update."""
        if self.config.screen:
            from .screening import screen_teachers

            c = self.ctx
            sc = screen_teachers(teachers, c.val_x, c.val_y, c.n_classes, core_state=core, update_norms=unorms,
                                 norm_ref=self.norm_ref(), nodes=[u.node_id for u in self.buffer])
            for i, why in sc.dropped.items():
                log.info("screening: dropped teacher from node %s (base v%d): %s",
                         self.buffer[i].node_id, self.buffer[i].base_version, why)
            kept, mute = sc.kept, set(sc.at_chance)
        else:
            kept, mute = list(range(len(teachers))), set()
        info = {"used": len(kept), "dropped": len(teachers) - len(kept)}
        evict = {int(self.buffer[i].node_id) for i in range(len(self.buffer)) if i not in kept} & set(self.cache)
        for n in evict:
            log.info("cache: node %s's cached update leaves (its latest update was dropped)", n)
            del self.cache[n]
        if evict:
            info["evicted"] = len(evict)
        return kept, mute, info

    def _server_step(self, core: State, version: int, kept: list[int], ex: dict, mute: set):
        """The student's start: one server step along the kept teachers' clipped updates,
        ``sum_i s(tau_i) r_i d_i / sum_i r_i`` with r_i = examples (staleness is an absolute
        discount, as in FedBuff: old updates shrink the step, not just its mix). Returns the start
        and the cache before this step (restored if the guard rejects it; None without a cache)."""
        c = self.config
        deltas = {i: {k: self.buffer[i].state[f"d/{k}"] for k in float_keys(core)} for i in kept}
        norms = {i: float(np.sqrt(sum(float((d ** 2).sum()) for d in deltas[i].values()))) for i in kept}
        by_node: dict[int, list[float]] = {}
        for i in kept:
            by_node.setdefault(int(self.buffer[i].node_id), []).append(norms[i])
        # norm clipping: no update outweighs the median over nodes (of each node's median), so a
        # fast node with several updates in the buffer does not set the clip alone
        cap = float(np.median([np.median(v) for v in by_node.values()]))
        scale = {i: min(1.0, cap / max(norms[i], 1e-12)) if c.clip else 1.0 for i in kept}
        entries = [(self.buffer[i].base_version, ex[i], {k: scale[i] * d for k, d in deltas[i].items()})
                   for i in kept]
        cache_before = None
        if c.cached_updates:
            cache_before = dict(self.cache)
            self.cache = {n: e for n, e in self.cache.items() if version - e[0] <= self.ctx.max_staleness}
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
        coef = [ri * staleness_weight(version - b, c.staleness) for b, ri, _ in entries]
        tot = sum(ri for _, ri, _ in entries)
        step = {k: sum(cf * d[k] for cf, (_, _, d) in zip(coef, entries)) / tot for k in float_keys(core)}
        return merge_fixed({k: core[k] + c.server_lr * step[k] for k in step}, core), cache_before

    def _distill(self, core: State, start: State, version: int, t_list: list, t_w: list[float],
                 info: dict) -> tuple[State, float | None]:
        """Distil the teachers into the student (from ``start``); (new core, its validation
        accuracy if measured)."""
        c = self.config
        if c.distill_epochs <= 0 or not t_list:
            return start, None
        from ..models import get_state, set_state
        from .distill import distill

        student = set_state(self.ctx.model_fn(), start)
        retain = set_state(self.ctx.model_fn(), core)  # the core's own knowledge
        info.update(distill(student, t_list, t_w, self.ctx.public_x, attend=c.attend, temperature=c.temperature,
                            epochs=c.distill_epochs, lr=c.distill_lr, seed=self.ctx.seed + version, retain=retain))
        distilled = merge_fixed(get_state(student), core)
        if not c.distill_accept:
            return distilled, None
        v_start, v_dist = self._val(start), self._val(distilled)
        keep = v_dist > v_start  # distillation may only help (judged on validation, never test)
        info["distilled-kept" if keep else "distilled-discarded"] = 1
        return (distilled, v_dist) if keep else (start, v_start)

    def _guard_passes(self, core: State, new: State, v_new: float | None, info: dict) -> bool:
        """Step guard: never accept a core that got clearly worse on validation. The reference is
        the median validation accuracy of the last accepted cores: one lucky core (its validation
        score is an overestimate) must not block every later step (seen: 17 honest 5-teacher steps
        in a row rejected after one such core). Tolerance: ``guard``, or 2 binomial standard
        errors if the validation set is small."""
        c = self.config
        after = v_new if v_new is not None else self._val(new)
        if c.guard_window > 1 and self.val_hist:
            before = float(np.median(self.val_hist[-c.guard_window:]))
        else:
            before = self._val(core)
        tol = max(c.guard, 2.0 * float(np.sqrt(max(before * (1 - before), 1e-4) / len(self.ctx.val_y))))
        if after < before - tol:
            log.info("step guard: kept the core (validation %.3f -> %.3f)", before, after)
            info["guarded"] = 1
            return False
        self.val_hist = (self.val_hist + [after])[-max(c.guard_window, 1):]
        return True

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        out = super().state_dict()
        nodes = list(self.cache)
        out["cache"] = [[int(n), int(self.cache[n][0]), float(self.cache[n][1])] for n in nodes]
        for j, n in enumerate(nodes):
            out.update({f"cache/{j}/{k}": v for k, v in self.cache[n][2].items()})
        out.update(norm_hist=list(self.norm_hist), norm_nodes=list(self.norm_nodes), val_hist=list(self.val_hist),
                   claims=[[int(n), int(c)] for n, c in self.claims.items()])
        return out

    def buffered_arrays(self, core: State) -> State:
        return {**{f"t/{k}": v for k, v in core.items()}, **{f"d/{k}": core[k] for k in float_keys(core)}}

    def load_state_dict(self, state: dict, reference: State | None = None) -> None:
        super().load_state_dict(state, reference)
        cache = {int(n): (int(b), float(w), nested(state, f"cache/{j}/")) for j, (n, b, w) in enumerate(state["cache"])}
        if reference is not None:
            for n, (_, _, d) in cache.items():
                check_arrays(f"cached update of node {n}", d, {k: reference[k] for k in float_keys(reference)})
        self.cache = cache
        self.norm_hist = [float(x) for x in state["norm_hist"]]
        self.norm_nodes = [int(x) for x in state["norm_nodes"]]
        if len(self.norm_nodes) != len(self.norm_hist):
            raise ValueError("norm_hist and norm_nodes differ in length")
        self.val_hist = [float(x) for x in state["val_hist"]]
        self.claims = {int(n): int(c) for n, c in state["claims"]}
