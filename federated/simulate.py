"""Virtual-clock simulation: the real ServerApp loop and ClientApp on a Flower ``Grid`` whose
time is simulated, so results do not depend on the machine's speed or load.

Each node has a speed (seconds per training example, log-normal across nodes), a link
bandwidth, and online sessions (churn: exponential on/off periods; some nodes only join later).
A clone pushed at virtual time t to node i comes back at t + epochs*n_i*c_i + 2*bytes/bw_i,
unless the node goes offline before then -- then it never comes back (like a killed process).
The ClientApp (client_app.train_clone) really trains; only *time* is virtual. The server's own
compute (distillation, averaging) is counted as zero virtual time for every method.
"""
from __future__ import annotations

import heapq
import logging
import uuid
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from .client_app import ATTACKS
from .models import record_bytes

log = logging.getLogger("edgekit.federated")


class VirtualClock:
    def __init__(self, grid: "VirtualGrid"):
        self.t = 0.0
        self.grid = grid

    def now(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        """Advance to now+dt, or earlier to the next event (a reply lands, a node joins)."""
        nxt = self.grid.next_event_after(self.t)
        self.t = min(self.t + max(dt, 0.0), nxt) if nxt is not None else self.t + max(dt, 0.0)


@dataclass
class NodeProfile:
    node_id: int
    partition_id: int
    sec_per_example: float
    bandwidth: float  # bytes per virtual second
    sessions: list[tuple[float, float]]  # online [start, end) intervals
    attack: str = ""
    node_config: dict = field(default_factory=dict)

    def online(self, t: float) -> bool:
        return any(a <= t < b for a, b in self.sessions)

    def session_end(self, t: float) -> float | None:
        for a, b in self.sessions:
            if a <= t < b:
                return b
        return None


def churn_means(horizon: float, mean_on: float | None = None,
                mean_off: float | None = None) -> tuple[float, float]:
    """Mean online and offline periods (virtual units); defaults horizon/4 and horizon/12."""
    return mean_on or horizon / 4, mean_off or horizon / 12


def base_sec_per_example(pool: int, clients: int) -> float:
    """The time unit: a median-speed node needs 10 units for one epoch on an average partition."""
    return 10.0 / max(1.0, pool / clients)


def make_profiles(n: int, *, seed: int, horizon: float, malicious: float = 0.0,
                  speed_sigma: float = 1.0, sec_per_example: float = 0.2,
                  bandwidth: float = 2e5, mean_on: float | None = None,
                  mean_off: float | None = None, late_fraction: float = 0.2,
                  churn: bool = True) -> list[NodeProfile]:
    """Heterogeneous nodes: log-normal speed and bandwidth, exponential on/off churn."""
    rng = np.random.default_rng(seed + 7919)
    mean_on, mean_off = churn_means(horizon, mean_on, mean_off)
    # a separate stream: the same seed gives the same speeds and churn with or without attackers
    pick = np.random.default_rng(seed + 104729)
    bad = set(pick.choice(n, size=int(round(malicious * n)), replace=False).tolist()) if malicious else set()
    profiles = []
    for i in range(n):
        if churn:
            t = float(rng.uniform(0, horizon / 2)) if rng.random() < late_fraction else 0.0
            sessions = []
            while t < horizon * 2:
                on = float(rng.exponential(mean_on))
                sessions.append((t, t + on))
                t += on + float(rng.exponential(mean_off))
        else:
            sessions = [(0.0, float("inf"))]
        attack = ATTACKS[sorted(bad).index(i) % len(ATTACKS)] if i in bad else ""
        profiles.append(NodeProfile(
            node_id=1000 + i, partition_id=i,
            sec_per_example=sec_per_example * float(rng.lognormal(0.0, speed_sigma)),
            bandwidth=bandwidth * float(rng.lognormal(0.0, 0.5)), sessions=sessions, attack=attack,
            node_config={"partition-id": i, "num-partitions": n, **({"attack": attack} if attack else {})}))
    return profiles


class VirtualGrid(Grid):
    """A Flower Grid backed by in-process ClientApp calls and a virtual clock."""

    def __init__(self, profiles: list[NodeProfile], client_fn=None):
        from .client_app import train_clone

        self.profiles = {p.node_id: p for p in profiles}
        self.client_fn = client_fn or train_clone
        self.clock = VirtualClock(self)
        self.contexts = {p.node_id: Context(run_id=1, node_id=p.node_id, node_config=dict(p.node_config),
                                            state=RecordDict(), run_config={}) for p in profiles}
        self._ready: list[tuple[float, int, str]] = []  # heap of (ready time, seq, message id)
        self._replies: dict[str, Message] = {}
        self._seq = 0
        self.lost = 0
        self._run = None
        from flwr.supercore.task_identity import TaskIdentity

        if TaskIdentity._run_id is None:  # as Flower's own in-process grid does: a local "run"
            TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1

    # Grid API ---------------------------------------------------------------
    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:
        ids = [n for n, p in self.profiles.items() if p.online(self.clock.t)]
        while not ids:  # nobody online: waiting for a node costs virtual time
            nxt = self._next_join(self.clock.t)
            if nxt is None:
                return []
            self.clock.t = nxt
            ids = [n for n, p in self.profiles.items() if p.online(self.clock.t)]
        return ids

    def push_messages(self, messages) -> list[str]:
        ids = []
        for msg in messages:
            mid = uuid.uuid4().hex
            msg.metadata.__dict__["_message_id"] = mid
            ids.append(mid)
            p = self.profiles.get(msg.metadata.dst_node_id)
            now = self.clock.t
            if p is None or not p.online(now):
                self._schedule(now, mid, Message(Error(code=3, reason="node unavailable"), reply_to=msg))
                continue
            nbytes = record_bytes(msg.content)
            n_ex = self._examples(p)
            epochs = int(msg.content.config_records["config"].get("epochs", 1)) \
                if "config" in msg.content.config_records else 1
            done_at = now + epochs * n_ex * p.sec_per_example + 2 * nbytes / p.bandwidth
            end = p.session_end(now)
            if end is not None and done_at > end:
                self.lost += 1  # the node leaves before it can answer: no reply, ever
                continue
            try:
                reply = self.client_fn(msg, self.contexts[p.node_id])
            except Exception as err:  # noqa: BLE001 - as Flower does: a raising ClientApp is an error reply
                log.warning("node %s: ClientApp raised %s: %s", p.node_id, type(err).__name__, err)
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                      reason=f"{type(err).__name__}: {err}"), reply_to=msg)
            self._schedule(done_at, mid, reply)
        return ids

    def pull_messages(self, message_ids) -> list[Message]:
        want = set(message_ids)
        out = []
        for mid in [m for m in want if m in self._replies]:
            t = self._replies[mid].__dict__.get("_edgekit_ready", 0.0)
            if t <= self.clock.t:
                out.append(self._replies.pop(mid))
        return out

    def send_and_receive(self, messages, *, timeout=None):
        ids = set(self.push_messages(list(messages)))
        end = self.clock.t + (timeout if timeout is not None else 1e12)
        out: list[Message] = []
        while ids:
            got = self.pull_messages(ids)
            out.extend(got)
            ids -= {m.metadata.reply_to_message_id for m in got}
            if not ids or self.clock.t >= end:
                break
            self.clock.sleep(end - self.clock.t)
        return out

    # internals ----------------------------------------------------------------
    def _schedule(self, t: float, mid: str, reply: Message) -> None:
        reply.__dict__["_edgekit_ready"] = t
        self._replies[mid] = reply
        self._seq += 1
        heapq.heappush(self._ready, (t, self._seq, mid))

    def _examples(self, p: NodeProfile) -> int:
        from .data import _partitions, load_dataset

        cfg = p.node_config
        n = int(cfg.get("num-partitions", 1))
        key = (p.partition_id, n)
        if not hasattr(self, "_ex_cache"):
            self._ex_cache = {}
        if key not in self._ex_cache:
            s = load_dataset(self._dataset, self._seed)
            parts = _partitions(s.name, self._seed, n, self._alpha)
            self._ex_cache[key] = len(parts[p.partition_id]) if p.partition_id < n else 1
        return max(1, self._ex_cache[key])

    def configure(self, dataset: str, seed: int, alpha: float) -> "VirtualGrid":
        self._dataset, self._seed, self._alpha = dataset, seed, alpha
        return self

    def _next_join(self, t: float) -> float | None:
        starts = [a for p in self.profiles.values() for a, _ in p.sessions if a > t]
        return min(starts) if starts else None

    def next_event_after(self, t: float) -> float | None:
        while self._ready and self._ready[0][2] not in self._replies:
            heapq.heappop(self._ready)  # already pulled
        cands = [r for r, _, mid in self._ready if r > t and mid in self._replies]
        nj = self._next_join(t)
        if nj is not None:
            cands.append(nj)
        return min(cands) if cands else None


def check_simulation(clients: int, malicious: float, horizon: float) -> None:
    """Raise UsageError for settings no simulation can run with."""
    from edgekit.core.errors import UsageError

    if clients < 1:
        raise UsageError(f"--clients must be >= 1, got {clients}")
    if not 0.0 <= malicious < 1.0:
        raise UsageError(f"--malicious must be in [0, 1), got {malicious}")
    if round(malicious * clients) >= clients:
        raise UsageError(f"--malicious {malicious} makes all {clients} nodes malicious",
                         f"use a fraction below {(clients - 0.5) / clients:.3g} or more --clients")
    if not 0.0 < horizon < float("inf"):
        raise UsageError(f"--horizon must be a positive number of virtual time units, got {horizon}",
                         "e.g. --horizon 1500 (a median node needs 10 units per epoch)")


def simulate(method: str = "cloned", clients: int = 20, malicious: float = 0.0, seed: int = 0,
             dataset: str = "digits", horizon: float = 3000.0, churn: bool = True,
             speed_sigma: float = 1.0, mean_on: float | None = None, mean_off: float | None = None,
             **overrides) -> dict:
    """Run one method under the virtual clock and return the server's result (with curve).

    Churn: a node's online and offline periods are exponential with means ``mean_on`` and
    ``mean_off`` virtual units (default horizon/4 and horizon/12; a median node needs 10 units
    per local epoch)."""
    check_simulation(clients, malicious, horizon)
    for name, v in (("mean-on", mean_on), ("mean-off", mean_off)):
        if v is not None and not 0.0 < v < float("inf"):
            from edgekit.core.errors import UsageError

            raise UsageError(f"--{name} must be a positive number of virtual time units, got {v}")
    import torch

    from .config import FedConfig
    from .data import resolve_dataset
    from .server_app import AsyncServer

    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.WARNING)  # FedAvg logs every round at INFO
    dataset = resolve_dataset(dataset)
    cfg_kw = dict(method=method, dataset=dataset, seed=seed, num_partitions=clients,
                  max_time=horizon, max_versions=10**9, poll=1.0, deadline=horizon / 20)
    cfg_kw.update(overrides)
    cfg = FedConfig(**cfg_kw)
    from .data import MIN_PER_CLIENT, is_file_dataset, load_dataset

    pool = len(load_dataset(dataset, seed).pool_y)
    if is_file_dataset(dataset) and pool < MIN_PER_CLIENT * clients:
        from edgekit.core.errors import DataError

        raise DataError(f"data set file {dataset}: its client pool has {pool} examples, fewer than "
                        f"{MIN_PER_CLIENT} for each of {clients} clients",
                        f"use at most {max(1, pool // MIN_PER_CLIENT)} --clients, or more data")
    from .usermodel import check_run

    check_run(cfg.model, dataset, seed)  # the model, on a few real examples, before anything runs
    profiles = make_profiles(clients, seed=seed, horizon=horizon, malicious=malicious,
                             speed_sigma=speed_sigma, churn=churn,
                             sec_per_example=base_sec_per_example(pool, clients),
                             mean_on=mean_on, mean_off=mean_off)
    grid = VirtualGrid(profiles).configure(dataset, seed, cfg.alpha)
    result = AsyncServer(grid, cfg).run()
    result.update({"clients": clients, "malicious": malicious, "horizon": horizon,
                   "lost_replies": grid.lost, "churn": churn, "speed_sigma": speed_sigma,
                   **dict(zip(("mean_on", "mean_off"), churn_means(horizon, mean_on, mean_off))),
                   "attacks": {str(p.node_id): p.attack for p in profiles if p.attack}})
    return result
