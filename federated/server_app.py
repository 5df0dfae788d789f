"""Flower ServerApp: an asynchronous loop (no rounds) on Grid.push_messages / pull_messages.

Each pass of the loop
  1. re-reads ``grid.get_node_ids()`` so nodes that join mid-run get work,
  2. pushes a clone of the current core model (with its version) to every idle node,
  3. pulls whatever replies have arrived; error replies (node unavailable, client rejected its
     data) are logged and the node is freed; replies of the wrong shape/keys, without examples,
     with a wrong base version or too stale are rejected with a logged reason,
  4. expires messages past their own deadline (a SIGKILLed node never answers and Flower's
     heartbeat takes about a minute to notice); deadlines are per node (node_deadline): a slow
     node gets more time, a dead one a growing, bounded wait,
  5. when the aggregator is ready (K buffered) it updates the core model and bumps the version,
  6. checkpoints atomically after every accepted update and every core update.
The same loop runs on a real SuperLink and on the virtual-clock grid (simulate.py), which
advances virtual time when the loop sleeps. ``method=fedavg`` runs Flower's own FedAvg instead
(fedavg_baseline.py).
"""
from __future__ import annotations

import logging
import time
from collections import Counter

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from edgekit.core.errors import EdgekitError

from . import checkpoint as ckpt
from .config import FedConfig
from .models import record_bytes
from .strategies import Rejected, Update, _reply_problem

log = logging.getLogger("edgekit.federated")
# (result-meta key, aggregator attribute): node id -> updates contributed / latest claimed examples
NODE_TALLIES = (("node-counts", "node_counts"), ("node-claims", "claims"))
# FedConfig fields passed to the aggregator under the same name
AGGREGATOR_FIELDS = ("buffer_size", "attend", "init", "screen", "guard", "clip", "temperature", "seed",
                     "server_lr", "server_momentum", "staleness", "distill_accept", "example_weighting",
                     "example_cap", "teacher_window", "combine", "refill", "guard_window",
                     "rate_weighting", "norm_history", "lr_decay", "norm_per_step", "batch_size",
                     "cached_updates", "max_staleness")


class RealClock:
    def now(self) -> float:
        return time.monotonic()

    def sleep(self, dt: float) -> None:
        time.sleep(dt)


class AsyncServer:
    """The asynchronous server loop (also drives Flower's FedAvg for the baseline)."""

    def __init__(self, grid: Grid, cfg: FedConfig, clock=None):
        import torch

        from .data import load_dataset
        from .models import build_model, get_state
        from .strategies import make_aggregator

        torch.set_num_threads(1)
        self.grid, self.cfg = grid, cfg
        self.clock = clock or getattr(grid, "clock", None) or RealClock()
        self.data = s = load_dataset(cfg.dataset, cfg.seed)
        self.model_fn = lambda: build_model(cfg.model, s.in_dim, s.n_classes, seed=cfg.seed)
        self.aggregator = make_aggregator(
            "fedbuff" if cfg.method == "fedavg" else cfg.method, model_fn=self.model_fn,
            public_x=s.public_x, val_x=s.val_x, val_y=s.val_y, n_classes=s.n_classes,
            epochs=cfg.distill_epochs, lr=cfg.distill_lr, max_wait=cfg.max_wait or None,
            **{k: getattr(cfg, k) for k in AGGREGATOR_FIELDS})
        self.core, self.version, self.accepted = get_state(self.model_fn()), 0, 0
        self.meta: dict = {"method": cfg.method, "curve": [], "elapsed": 0.0, "bytes-down": 0,
                           "bytes-up": 0, "rejected": {}, "errors": 0, "timeouts": 0}
        self.resumed = False
        self._grid_errors: Counter = Counter()  # per Grid call: failures in a row (see _grid_call)
        self.served: dict | None = None  # EMA of the core (cfg.ema > 0): the model that is served
        self.ema_updates = 0  # EMA updates so far (for the warm-up)
        if cfg.checkpoint_dir:
            st = ckpt.load(cfg.checkpoint_dir)
            if st is not None:
                if st.meta.get("method") != cfg.method:
                    raise ckpt.CheckpointError(
                        f"checkpoint in {cfg.checkpoint_dir} is for method {st.meta.get('method')!r},"
                        f" not {cfg.method!r}", "use another --checkpoint-dir")
                from .models import shape_mismatch

                if (why := shape_mismatch(st.core, self.core)) is not None:
                    raise ckpt.CheckpointError(f"checkpoint does not fit the model: {why}")
                self.core, self.version, self.accepted = st.core, st.version, st.accepted
                self.aggregator.buffer, self.meta = st.buffer, {**self.meta, **st.meta}
                mom = {k[9:]: v for k, v in st.aux.items() if k.startswith("momentum/")}
                self.aggregator.momentum = mom or None
                self.served = {k[7:]: v for k, v in st.aux.items() if k.startswith("served/")} or None
                if "norm-hist" in st.aux and hasattr(self.aggregator, "norm_hist"):
                    self.aggregator.norm_hist = [float(x) for x in st.aux["norm-hist"]]
                    self.aggregator.norm_nodes = [int(x) for x in st.aux.get("norm-nodes", [])]
                if hasattr(self.aggregator, "cache"):
                    self.aggregator.cache = ckpt.cache_from_arrays(st.aux)
                if "val-hist" in st.aux and hasattr(self.aggregator, "val_hist"):
                    self.aggregator.val_hist = [float(x) for x in st.aux["val-hist"]]
                self.ema_updates = int(self.meta.get("ema-updates", self.version))
                for key, attr in NODE_TALLIES:  # per-node counters of the cloned aggregator
                    if hasattr(self.aggregator, attr):
                        setattr(self.aggregator, attr, {int(k): int(v) for k, v in self.meta.get(key, {}).items()})
                self.resumed = True
                log.info("resumed from checkpoint: version %d, %d buffered, %d accepted",
                         self.version, len(st.buffer), self.accepted)
        self.history = {self.version: self.core}
        self.inflight: dict[str, tuple[int, int, float, float]] = {}  # msg id -> node, version, deadline, sent
        # each node's own deadline (see node_deadline): learned from its replies, grown by its misses
        self.node_timeout: dict[int, float] = {}
        self.departed: set[str] = set()  # in-flight messages whose node has left (see dispatch)
        self.backoff: dict[int, float] = {}  # node -> no new clone before this time (error replies)
        self.last_sent: dict[int, tuple[int, int]] = {}  # node -> (version, clones of it sent so far)
        self.rejected: Counter = Counter(self.meta.get("rejected", {}))
        self._t0 = self.clock.now() - float(self.meta.get("elapsed", 0.0))
        if not self.meta["curve"]:
            self._record(0)

    # ----------------------------------------------------------------- bookkeeping
    def elapsed(self) -> float:
        return self.clock.now() - self._t0

    def accuracy(self, split: str = "test") -> float:
        from .models import accuracy, set_state

        x, y = (self.data.val_x, self.data.val_y) if split == "val" else (self.data.test_x, self.data.test_y)
        return accuracy(set_state(self.model_fn(), self.serving()), x, y)

    @property
    def ema(self) -> float:
        return self.cfg.fedavg_ema if self.cfg.method == "fedavg" else self.cfg.ema

    def serving(self) -> dict:
        """The model the server serves and evaluates: the core, or its EMA over versions."""
        return self.served if (self.ema > 0 and self.served is not None) else self.core

    def _update_served(self) -> None:
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

    def _record(self, used: int) -> None:
        """One curve point. ``acc`` is test accuracy (reported only); ``val`` is the server's
        validation accuracy, the only number hyper-parameters are chosen on."""
        m = self.meta
        m["curve"].append({"t": round(self.elapsed(), 3), "version": self.version,
                           "acc": round(self.accuracy(), 4), "val": round(self.accuracy("val"), 4),
                           "accepted": self.accepted,
                           "bytes": m["bytes-down"] + m["bytes-up"], "used": used})

    def save(self) -> None:
        self.meta["elapsed"] = self.elapsed()
        self.meta["rejected"] = dict(self.rejected)
        for key, attr in NODE_TALLIES:
            if getattr(self.aggregator, attr, None):
                self.meta[key] = {str(k): v for k, v in getattr(self.aggregator, attr).items()}
        if self.cfg.checkpoint_dir:
            mom = getattr(self.aggregator, "momentum", None) or {}
            aux = {f"momentum/{k}": v for k, v in mom.items()}
            aux.update({f"served/{k}": v for k, v in (self.served or {}).items()})
            hist = getattr(self.aggregator, "norm_hist", None)
            if hist:
                aux["norm-hist"] = np.asarray(hist, np.float64)
                aux["norm-nodes"] = np.asarray(self.aggregator.norm_nodes, np.uint64)  # Flower node ids are uint64
            aux.update(ckpt.cache_arrays(getattr(self.aggregator, "cache", {})))
            if getattr(self.aggregator, "val_hist", None):
                aux["val-hist"] = np.asarray(self.aggregator.val_hist, np.float64)
            ckpt.save(self.cfg.checkpoint_dir, ckpt.ServerState(
                self.core, self.version, list(self.aggregator.buffer), self.accepted, self.meta, aux=aux))

    def reject(self, node: int, why: str) -> None:
        log.warning("rejected update from node %s: %s", node, why)
        self.rejected[why.split(":")[0][:60]] += 1

    def done(self) -> bool:
        c = self.cfg
        return self.version >= c.max_versions or (c.max_time > 0 and self.elapsed() >= c.max_time)

    # ----------------------------------------------------------------- async loop
    def _grid_call(self, fn, *args, default):
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

    GRID_ERRORS_MAX = 60
    DEADLINE_GROWTH_MAX = 8  # a node's own deadline is at most this many times --deadline

    def node_deadline(self, node: int) -> float:
        """How long a clone sent to ``node`` may take: --deadline until the node has answered or
        missed; then twice its last round trip, doubled by each miss (bounded)."""
        return self.node_timeout.get(node, self.cfg.deadline)

    def dispatch(self) -> int:
        from .models import state_to_record

        now = self.clock.now()
        online = self._grid_call(self.grid.get_node_ids, default=None)
        if online is None:
            return 0
        online = {int(n) for n in online}
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
            content = RecordDict({"arrays": rec,
                                  "config": ConfigRecord({**self.client_config(), "repeat": repeat})})
            msgs.append(Message(content, dst_node_id=int(n), message_type="train",
                                ttl=max(2 * self.node_deadline(int(n)), 10.0), group_id=str(self.version)))
        ids = list(self._grid_call(self.grid.push_messages, msgs, default=[]))
        for n, mid in zip(nodes, ids):
            if mid:
                self.inflight[mid] = (int(n), self.version, now + self.node_deadline(int(n)), now)
                self.meta["bytes-down"] += record_bytes(msgs[0].content)
        return len(ids)

    def collect(self) -> int:
        if not self.inflight:
            return 0
        got = 0
        for reply in self._grid_call(self.grid.pull_messages, list(self.inflight), default=[]):
            key = reply.metadata.reply_to_message_id
            if key not in self.inflight:
                continue
            node, version, _, sent = self.inflight.pop(key)
            self.departed.discard(key)
            got += 1
            if reply.has_error():
                self.meta["errors"] += 1
                log.warning("node %s replied with an error (code %s): %s", node,
                            reply.error.code, reply.error.reason)
                self.backoff[node] = self.clock.now() + self.cfg.deadline / 4
                continue
            self.meta["bytes-up"] += record_bytes(reply.content)
            self.backoff.pop(node, None)
            # a node that answers: twice its measured round trip (never below --deadline)
            self.node_timeout[node] = min(max(self.cfg.deadline, 2.0 * (self.clock.now() - sent)),
                                          self.DEADLINE_GROWTH_MAX * self.cfg.deadline)
            self.accept(node, version, reply)
        return got

    def accept(self, node: int, version: int, reply: Message) -> None:
        from .models import record_to_state, shape_mismatch

        why = _reply_problem(reply, self.core, record_to_state, shape_mismatch)
        if why is None:
            m = reply.content.metric_records["metrics"]
            base = int(m.get("base-version", -1))
            if base != version:
                why = f"base version {base} does not match the dispatched version {version}"
            elif self.version - base > self.cfg.max_staleness:
                why = f"too stale: base version {base}, core version {self.version}"
        if why is not None:
            return self.reject(node, why)
        m = reply.content.metric_records["metrics"]
        upd = Update(node_id=node, base_version=version, num_examples=int(m["num-examples"]),
                     state=record_to_state(reply.content.array_records["arrays"]),
                     arrived=self.clock.now(),
                     metrics={k: float(v) for k, v in m.items() if isinstance(v, (int, float))})
        try:
            self.aggregator.add(upd, self.history)
        except Rejected as err:
            return self.reject(node, str(err))
        self.accepted += 1
        by = self.meta.setdefault("by-partition", {})
        pid = str(int(m.get("partition-id", -1)))
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
        if not self.aggregator.ready(self.clock.now()):
            return False
        new, info = self.aggregator.aggregate(self.core, self.version)
        stats = self.meta.setdefault("agg-stats", {})
        for k in ("dropped", "guarded", "deferred", "at-chance", "evicted", "distilled-kept",
                  "distilled-discarded"):
            stats[k] = stats.get(k, 0) + int(info.get(k, 0))
        if info.get("guarded") or info.get("deferred"):  # the core did not change: keep its version (no false staleness)
            self.save()
            return True
        self.core, self.version = new, self.version + 1
        self._update_served()
        self.history[self.version] = new
        for v in [v for v in self.history if v < self.version - self.cfg.max_staleness]:
            del self.history[v]
        self._record(int(info.get("used", 0)))
        log.info("core v%d: acc %.4f (used %s, dropped %s) at t=%.1f", self.version,
                 self.meta["curve"][-1]["acc"], info.get("used"), info.get("dropped"), self.elapsed())
        self.save()
        return True

    def wait_for_nodes(self) -> None:
        t_end = self.clock.now() + max(self.cfg.deadline, 30.0)
        while len(list(self.grid.get_node_ids())) < self.cfg.min_nodes and self.clock.now() < t_end:
            self.clock.sleep(self.cfg.poll)

    def run(self) -> dict:
        if self.cfg.method == "fedavg":
            from .fedavg_baseline import run_fedavg

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
                  "resumed": self.resumed,
                  "by_partition": self.meta.get("by-partition", {}),
                  "agg_stats": self.meta.get("agg-stats", {}),
                  "curve": self.meta["curve"]}
        if self.cfg.out:
            ckpt.write_json_atomic(self.cfg.out, result)
        return result


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    cfg = FedConfig.from_run_config(context.run_config)
    result = AsyncServer(grid, cfg).run()
    log.info("finished: method %s, version %d, final accuracy %.4f", result["method"],
             result["version"], result["final_acc"])
