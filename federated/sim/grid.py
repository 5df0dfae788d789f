"""A Flower ``Grid`` whose time is virtual: the real server loop and the real ClientApp code
(client.train_clone, called in-process) run on it; only *time* is simulated.

A clone pushed at virtual time t to node i comes back at t + epochs*n_i*c_i + 2*bytes/bw_i
(nodes.py: speeds, bandwidths, sessions), unless the node goes offline before then -- then it
never comes back (like a killed process). The server's own compute (distillation, averaging)
counts as zero virtual time for every method.
"""
from __future__ import annotations

import heapq
import logging
import uuid

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from ..client import train_clone
from ..data import load_dataset, partitions
from ..state import record_bytes
from .nodes import NodeProfile

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


class VirtualGrid(Grid):
    """A Flower Grid backed by in-process ClientApp calls and a virtual clock."""

    def __init__(self, profiles: list[NodeProfile], client_fn=None, *, dataset: str = "digits", seed: int = 0,
                 alpha: float = 0.5):
        self.dataset, self.seed, self.alpha = dataset, seed, alpha  # what the nodes' partitions are of
        self._ex_cache: dict[tuple[int, int], int] = {}
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
        n = int(p.node_config.get("num-partitions", 1))
        key = (p.partition_id, n)
        if key not in self._ex_cache:
            s = load_dataset(self.dataset, self.seed)
            parts = partitions(s.name, self.seed, n, self.alpha)
            self._ex_cache[key] = len(parts[p.partition_id]) if p.partition_id < n else 1
        return max(1, self._ex_cache[key])

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


