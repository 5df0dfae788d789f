"""The asynchronous server loop (no rounds) on Flower's Grid.push_messages / pull_messages.

Each pass of the loop
  1. re-reads ``grid.get_node_ids()`` so nodes that join mid-run get work (and says so, now and
     then, while no node is connected),
  2. pushes a clone of the current core model (with its version) to every idle node,
  3. pulls whatever replies have arrived; error replies (node unavailable, client rejected its
     data) are logged and the node is freed; every other reply is checked field by field
     (messages.py) before anything of it is used, and a bad one is rejected with a logged reason,
  4. expires messages past their own deadline (a SIGKILLed node never answers and Flower's
     heartbeat takes about a minute to notice); deadlines are per node (node_deadline): a slow
     node gets more time, a dead one a growing, bounded wait,
  5. when the strategy is ready (K buffered) it computes the next core; the core is checked
     (finite, weights not beyond the bound of state.MagnitudeCheck) before it is committed, and
     an unsafe step is dropped with the strategy's state restored,
  6. checkpoints atomically after every accepted update and every core update.
The same loop runs on a real SuperLink (app.py) and on the virtual-clock grid (sim/), which
advances virtual time when the loop sleeps. ``method=fedavg`` runs Flower's own FedAvg (fedavg.py).
"""
from __future__ import annotations

import logging
import time
from collections import Counter

import numpy as np
import torch
from flwr.serverapp import Grid

from edgekit.core.errors import EdgekitError

from ..data import load_dataset
from ..errors import CheckpointError
from ..models import accuracy, build_model, get_state, parameter_names, set_state
from ..state import MagnitudeCheck, record_bytes, shape_mismatch, state_to_record
from ..strategies import ServerContext, make_strategy
from ..strategies.base import Rejected
from . import checkpoint as ckpt
from .fedavg import run_fedavg
from .messages import instruction, read_reply

log = logging.getLogger("edgekit.federated")
AGG_STATS = ("dropped", "guarded", "deferred", "at-chance", "evicted", "distilled-kept", "distilled-discarded",
             "unsafe")


class RealClock:
    def now(self) -> float:
        return time.monotonic()

    def sleep(self, dt: float) -> None:
        time.sleep(dt)


class AsyncServer:
    """The asynchronous server loop (also drives Flower's FedAvg for the baseline)."""

    GRID_ERRORS_MAX = 60
    DEADLINE_GROWTH_MAX = 8  # a node's own deadline is at most this many times --deadline
    IDLE_WARN_EVERY = 30.0  # clock seconds between "no node is connected" warnings

    def __init__(self, grid: Grid, cfg, clock=None, progress=None):
        torch.set_num_threads(1)
        self.progress = progress  # called with one line per curve point (the CLI's progress display)
        self.grid, self.cfg = grid, cfg
        self.clock = clock or getattr(grid, "clock", None) or RealClock()  # the virtual grid has its own
        self.data = s = load_dataset(cfg.dataset, cfg.seed)
        self.model_fn = lambda: build_model(cfg.model, s.in_dim, s.n_classes, seed=cfg.seed)
        model = self.model_fn()
        self.core, self.version, self.accepted = get_state(model), 0, 0
        self.magnitude = MagnitudeCheck(self.core, parameter_names(model))
        self.strategy = None if cfg.method == "fedavg" else make_strategy(
            cfg.method, cfg.strategy_config(), ServerContext(self.model_fn, s.public_x, s.val_x, s.val_y,
                                                             s.n_classes, cfg.seed, cfg.batch_size, cfg.max_staleness))
        self.meta: dict = {"method": cfg.method, "curve": [], "elapsed": 0.0, "bytes-down": 0,
                           "bytes-up": 0, "rejected": {}, "errors": 0, "timeouts": 0}
        self.resumed = False
        self._grid_errors: Counter = Counter()  # per Grid call: failures in a row (see _grid_call)
        self.served: dict | None = None  # EMA of the core (ema > 0): the model that is served
        self.ema_updates = 0  # EMA updates so far (for the warm-up)
        if cfg.checkpoint_dir:
            self._resume()
        self.history = {self.version: self.core}
        self.inflight: dict[str, tuple[int, int, float, float]] = {}  # msg id -> node, version, deadline, sent
        # each node's own deadline (see node_deadline): learned from its replies, grown by its misses
        self.node_timeout: dict[int, float] = {}
        self.departed: set[str] = set()  # in-flight messages whose node has left (see dispatch)
        self.backoff: dict[int, float] = {}  # node -> no new clone before this time (error replies)
        self.last_sent: dict[int, tuple[int, int]] = {}  # node -> (version, clones of it sent so far)
        self.rejected: Counter = Counter(self.meta.get("rejected", {}))
        self._t0 = self.clock.now() - float(self.meta.get("elapsed", 0.0))
        self._idle_warned = -float("inf")
        if not self.meta["curve"]:
            self.record(0)

    def _resume(self) -> None:
        """Continue from the checkpoint in --checkpoint-dir, if there is one (CheckpointError if it
        is another run's, does not fit the model, or is damaged; never a silent fresh start)."""
        st = ckpt.load(self.cfg.checkpoint_dir)
        if st is None:
            return
        p = ckpt.checkpoint_path(self.cfg.checkpoint_dir)
        if st.method != self.cfg.method:
            raise CheckpointError(f"checkpoint {p} is for method {st.method!r}, not {self.cfg.method!r}",
                                  "use another --checkpoint-dir")
        why = shape_mismatch(st.core, self.core) or self.magnitude.problem(st.core) \
            or (shape_mismatch(st.served, self.core) if st.served is not None else None)
        if why is not None:
            raise CheckpointError(f"checkpoint {p} does not fit the model: {why}",
                                  "use another --checkpoint-dir, or the model it was written for")
        if self.strategy is not None:
            try:
                self.strategy.load_state_dict(st.strategy, reference=st.core)
            except (KeyError, ValueError, TypeError, IndexError) as err:
                raise CheckpointError(f"checkpoint {p}: the {self.cfg.method} state is incomplete or malformed "
                                      f"({type(err).__name__}: {err})", ckpt.FIX) from None
        self.core, self.version, self.accepted = st.core, st.version, st.accepted
        self.meta, self.served = {**self.meta, **st.meta}, st.served
        self.ema_updates = int(self.meta.get("ema-updates", self.version))
        self.resumed = True
        log.info("resumed from checkpoint: version %d, %d buffered, %d accepted", self.version,
                 len(self.strategy.buffer) if self.strategy is not None else 0, self.accepted)

    # ----------------------------------------------------------------- bookkeeping
    def elapsed(self) -> float:
        return self.clock.now() - self._t0

    def accuracy(self, split: str = "test") -> float:
        x, y = (self.data.val_x, self.data.val_y) if split == "val" else (self.data.test_x, self.data.test_y)
        return accuracy(set_state(self.model_fn(), self.serving()), x, y)

    @property
    def ema(self) -> float:
        return self.cfg.fedavg_ema if self.cfg.method == "fedavg" else self.cfg.ema

    def serving(self) -> dict:
        """The model the server serves and evaluates: the core, or its EMA over versions."""
        return self.served if (self.ema > 0 and self.served is not None) else self.core

    def update_served(self) -> None:
        if self.ema <= 0:
            return
        if self.served is None:
            self.served = {k: v.copy() for k, v in self.core.items()}
        else:
            b = self.ema
            self.ema_updates += 1
            self.meta["ema-updates"] = self.ema_updates
            if self.cfg.ema_warmup:  # early on the average must not lag the fast-moving core
                b = min(b, (1.0 + self.ema_updates) / (10.0 + self.ema_updates))
            self.served = {k: (b * self.served[k] + (1 - b) * v).astype(v.dtype) if v.dtype.kind == "f" else v
                           for k, v in self.core.items()}  # integer buffers: the core's

    def record(self, used: int) -> None:
        """One curve point. ``acc`` is test accuracy (reported only); ``val`` is the server's
        validation accuracy, the only number hyper-parameters are chosen on."""
        m = self.meta
        m["curve"].append({"t": round(self.elapsed(), 3), "version": self.version,
                           "acc": round(self.accuracy(), 4), "val": round(self.accuracy("val"), 4),
                           "accepted": self.accepted,
                           "bytes": m["bytes-down"] + m["bytes-up"], "used": used})
        if self.progress is not None:
            p = m["curve"][-1]
            of = f" of {self.cfg.max_time:g}" if self.cfg.max_time else ""
            self.progress(f"t={p['t']:.1f}{of}: core v{p['version']}, test acc {p['acc']:.4f}, "
                          f"{p['accepted']} accepted updates")

    def save(self) -> None:
        self.meta["elapsed"] = self.elapsed()
        self.meta["rejected"] = dict(self.rejected)
        if self.cfg.checkpoint_dir:
            ckpt.save(self.cfg.checkpoint_dir, ckpt.ServerState(
                self.cfg.method, self.core, self.version, self.accepted, self.meta,
                served=self.served if self.ema > 0 else None,
                strategy=self.strategy.state_dict() if self.strategy is not None else {}))

    def reject(self, node: int, why: str) -> None:
        log.warning("rejected update from node %s: %s", node, why)
        self.rejected[why.split(":")[0][:60]] += 1

    def done(self) -> bool:
        c = self.cfg
        return self.version >= c.max_versions or (c.max_time > 0 and self.elapsed() >= c.max_time)

    # ----------------------------------------------------------------- async loop
    def grid_call(self, fn, *args, default):
        """A Grid call; a failure (SuperLink hiccup, a node killed mid-transfer) is logged and
        retried on the next pass instead of ending the run. Persistent failure still raises."""
        name = fn.__name__
        try:
            out = fn(*args)
        except EdgekitError:  # a user mistake (bad data set, bad partition): retrying cannot help
            raise
        except Exception as err:  # noqa: BLE001 - Flower raises several transport error types
            # counted per call: a get_node_ids that works must not hide a push that always fails
            self._grid_errors[name] += 1
            if self._grid_errors[name] > self.GRID_ERRORS_MAX:
                raise
            log.warning("grid %s failed (%d in a row), retrying: %s: %s", name,
                        self._grid_errors[name], type(err).__name__, err)
            self.clock.sleep(max(self.cfg.poll, 1.0))
            return default
        self._grid_errors[name] = 0
        return out

    def node_deadline(self, node: int) -> float:
        """How long a clone sent to ``node`` may take: --deadline until the node has answered or
        missed; then twice its last round trip, doubled by each miss (bounded)."""
        return self.node_timeout.get(node, self.cfg.deadline)

    def _say_idle(self, now: float) -> None:
        if now - self._idle_warned >= self.IDLE_WARN_EVERY:
            self._idle_warned = now
            log.warning("no node is connected (core version %d, %d clone(s) in flight); waiting for nodes",
                        self.version, len(self.inflight))

    def dispatch(self) -> int:
        now = self.clock.now()
        online = self.grid_call(self.grid.get_node_ids, default=None)
        if online is None:
            return 0
        online = {int(n) for n in online}
        if not online:
            self._say_idle(now)
        # a node that left the grid (churn; or a dead node once Flower's heartbeat noticed) cannot
        # answer: its node is free again at once, without a back-off, when it returns. Its message
        # stays pullable until its deadline (a reply sent just before leaving is still accepted)
        for mid, (n, *_) in self.inflight.items():
            if n not in online and mid not in self.departed:
                self.departed.add(mid)
                self.meta["departed"] = self.meta.get("departed", 0) + 1
        busy = {n for mid, (n, *_) in self.inflight.items() if mid not in self.departed}
        nodes = [n for n in online if n not in busy and self.backoff.get(n, 0.0) <= now]
        if not nodes:
            return 0
        rec = state_to_record(self.core)
        msgs = []
        for n in nodes:
            # a node that gets the same version again (the core has not moved since its last clone)
            # must not repeat the same training: ``repeat`` changes its shuffling seed. Otherwise
            # its clones are identical, and copies of one update in a buffer are counted as
            # agreeing teachers (seen: 3 identical clones made every other node's teacher look
            # like an outlier; the core never moved again)
            v, count = self.last_sent.get(int(n), (-1, 0))
            repeat = count if v == self.version else 0
            self.last_sent[int(n)] = (self.version, repeat + 1)
            msgs.append(instruction(rec, {**self.client_config(), "repeat": repeat}, node=n, version=self.version,
                                    ttl=max(2 * self.node_deadline(int(n)), 10.0)))
        ids = list(self.grid_call(self.grid.push_messages, msgs, default=[]))
        for n, mid in zip(nodes, ids):
            if mid:
                self.inflight[mid] = (int(n), self.version, now + self.node_deadline(int(n)), now)
                self.meta["bytes-down"] += record_bytes(msgs[0].content)
        return len(ids)

    def collect(self) -> int:
        if not self.inflight:
            return 0
        got = 0
        for reply in self.grid_call(self.grid.pull_messages, list(self.inflight), default=[]):
            key = reply.metadata.reply_to_message_id
            if key not in self.inflight:
                continue
            node, version, _, sent = self.inflight.pop(key)
            self.departed.discard(key)
            got += 1
            if reply.has_error():
                self.meta["errors"] += 1
                log.warning("node %s replied with an error (code %s): %s", node,
                            reply.error.code, str(reply.error.reason)[:300])
                self.backoff[node] = self.clock.now() + self.cfg.deadline / 4
                continue
            try:
                self.meta["bytes-up"] += record_bytes(reply.content)
            except Exception:  # noqa: BLE001 - undecodable arrays: read_reply rejects the reply
                pass
            self.backoff.pop(node, None)
            # a node that answers: twice its measured round trip (never below --deadline)
            self.node_timeout[node] = min(max(self.cfg.deadline, 2.0 * (self.clock.now() - sent)),
                                          self.DEADLINE_GROWTH_MAX * self.cfg.deadline)
            self.accept(node, version, reply)
        return got

    def accept(self, node: int, version: int, reply) -> None:
        """Take a reply in: every field is checked before any state is touched (a bad reply costs
        that reply only), then the strategy buffers it and the server checkpoints."""
        try:
            upd = read_reply(reply, node=node, version=version, reference=self.core, magnitude=self.magnitude,
                             arrived=self.clock.now())
            if self.version - upd.base_version > self.cfg.max_staleness:
                raise Rejected(f"too stale: base version {upd.base_version}, core version {self.version}")
            self.strategy.add(upd, self.history)
        except Rejected as err:
            return self.reject(node, str(err))
        self.accepted += 1
        by = self.meta.setdefault("by-partition", {})
        pid = str(int(upd.metrics.get("partition-id", -1)))
        by[pid] = by.get(pid, 0) + 1
        self.save()  # no accepted update is lost if the server dies now

    def expire(self) -> None:
        now = self.clock.now()
        for mid, (node, version, deadline, sent) in list(self.inflight.items()):
            if deadline <= now:
                del self.inflight[mid]
                if mid in self.departed:  # explained by the node leaving: no back-off
                    self.departed.discard(mid)
                    continue
                self.meta["timeouts"] += 1
                # a slow node is not a dead one: its next clone gets twice the time (at most
                # DEADLINE_GROWTH_MAX x --deadline). With one fixed deadline a node whose honest
                # training takes longer could never contribute (its data was lost to the run).
                # The doubled deadline is the back-off for a dead node that the grid still lists.
                self.node_timeout[node] = min(2.0 * (deadline - sent),
                                              self.DEADLINE_GROWTH_MAX * self.cfg.deadline)
                log.warning("node %s missed its deadline (%.1fs) for version %d; next: %.1fs", node,
                            deadline - sent, version, self.node_timeout[node])

    def maybe_aggregate(self) -> bool:
        if not self.strategy.ready(self.clock.now()):
            return False
        before = self.strategy.state_dict()
        new, info = self.strategy.aggregate(self.core, self.version)
        if not (info.get("guarded") or info.get("deferred")) and not self.safe(new):
            # the updates of this step leave with it; the strategy's history is as before the step
            self.strategy.load_state_dict({**before, "buffer": []})
            info["unsafe"] = 1
        stats = self.meta.setdefault("agg-stats", {})
        for k in AGG_STATS:
            stats[k] = stats.get(k, 0) + int(info.get(k, 0))
        if info.get("guarded") or info.get("deferred") or info.get("unsafe"):
            self.save()  # the core did not change: keep its version (no false staleness)
            return True
        self.commit(new, int(info.get("used", 0)))
        log.info("core v%d: acc %.4f (used %s, dropped %s) at t=%.1f", self.version,
                 self.meta["curve"][-1]["acc"], info.get("used"), info.get("dropped"), self.elapsed())
        self.save()
        return True

    def safe(self, new: dict) -> bool:
        """Whether a new core may be committed: the model's keys and shapes, finite, and weights
        within the bound (state.MagnitudeCheck), from the very first step."""
        why = shape_mismatch(new, self.core) or self.magnitude.problem(new)
        if why is not None:
            log.warning("core step dropped (the core stays at version %d): %s", self.version, why)
        return why is None

    def commit(self, new: dict, used: int) -> None:
        self.core, self.version = new, self.version + 1
        self.update_served()
        self.history[self.version] = new
        for v in [v for v in self.history if v < self.version - self.cfg.max_staleness]:
            del self.history[v]
        self.record(used)

    def wait_for_nodes(self) -> None:
        t_end = self.clock.now() + max(self.cfg.deadline, 30.0)
        n = 0
        while (n := len(list(self.grid.get_node_ids()))) < self.cfg.min_nodes and self.clock.now() < t_end:
            self.clock.sleep(self.cfg.poll)
        if n < self.cfg.min_nodes:
            log.warning("%d of the %d nodes asked for (--min-nodes) are connected; starting anyway", n,
                        self.cfg.min_nodes)

    def run(self) -> dict:
        if self.cfg.method == "fedavg":
            return run_fedavg(self)
        self.wait_for_nodes()
        while not self.done():
            self.dispatch()
            got = self.collect()
            self.expire()
            aggregated = self.maybe_aggregate()
            if not got and not aggregated:
                self.clock.sleep(self.cfg.poll)
        return self.finish()

    def client_config(self) -> dict:
        """The instruction's config: the run's training settings and the data set's shape, so a
        node with its own data file needs no copy of the server's data set."""
        s = self.data
        return {**self.cfg.client_config(self.version), "in-dim": int(s.in_dim), "n-classes": int(s.n_classes),
                "classes": [str(c) for c in s.classes]}

    def finish(self) -> dict:
        self.save()
        result = {"method": self.cfg.method, "config": self.cfg.to_run_config(),
                  "dataset": self.data.name, "classes": list(self.data.classes), "model": self.cfg.model,
                  "model_arrays": {k: list(np.shape(v)) for k, v in self.core.items()},
                  "version": self.version, "accepted": self.accepted,
                  "final_acc": self.meta["curve"][-1]["acc"], "elapsed": self.elapsed(),
                  "bytes": self.meta["bytes-down"] + self.meta["bytes-up"],
                  "rejected": dict(self.rejected), "errors": self.meta["errors"],
                  "timeouts": self.meta["timeouts"], "departed": self.meta.get("departed", 0),
                  "resumed": self.resumed, "by_partition": self.meta.get("by-partition", {}),
                  "agg_stats": self.meta.get("agg-stats", {}), "curve": self.meta["curve"]}
        if self.cfg.out:
            ckpt.write_json_atomic(self.cfg.out, result)
        return result
