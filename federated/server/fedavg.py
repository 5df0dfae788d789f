"""The synchronous baseline in the same harness: Flower's own FedAvg strategy
(strategies/fedavg.py), driven one round at a time by the AsyncServer, with a Grid wrapper that
counts the model bytes sent and received. Every reply is checked before Flower aggregates it, and
the round's model before it is committed."""
from __future__ import annotations

import logging

from flwr.app import ConfigRecord, Message
from flwr.serverapp import Grid

from ..state import merge_fixed, record_bytes, record_to_state, state_to_record
from ..strategies.fedavg import flower_fedavg
from .messages import reply_problem

log = logging.getLogger("edgekit.federated")


def run_fedavg(server) -> dict:
    """Flower's FedAvg on ``server`` (an AsyncServer), one ``strategy.start`` round at a time so
    that time limits, checkpoints, the served EMA and the curve work as for the async methods."""
    strategy = flower_fedavg(lambda m: reply_problem(m, version=server.version, reference=server.core,
                                                     magnitude=server.magnitude))
    grid = CountingGrid(server.grid, server.meta)
    server.wait_for_nodes()
    stats = server.meta.setdefault("agg-stats", {})
    while not server.done():
        res = strategy.start(grid=grid, initial_arrays=state_to_record(server.core), num_rounds=1,
                             timeout=server.cfg.deadline,
                             train_config=ConfigRecord(server.client_config()))
        if res.arrays is not None and len(res.arrays):
            new = merge_fixed(record_to_state(res.arrays), server.core)  # Flower averages every array
            if server.safe(new):
                server.core = new
            else:  # the round counts, its model does not
                stats["unsafe"] = stats.get("unsafe", 0) + 1
        server.update_served()  # the same serving EMA option as the async methods (per round)
        n = grid.replies
        grid.replies = 0
        server.version += 1
        server.accepted += n
        server.record(n)
        log.info("fedavg round %d: acc %.4f at t=%.1f", server.version,
                 server.meta["curve"][-1]["acc"], server.elapsed())
        server.save()
    return server.finish()


class CountingGrid(Grid):
    """Delegates to a grid and counts model bytes, for the FedAvg baseline's curve."""

    def __init__(self, inner: Grid, meta: dict):
        self.inner, self.meta, self.replies = inner, meta, 0

    def set_run(self, run):
        self.inner.set_run(run)

    @property
    def run(self):
        return self.inner.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self):
        return self.inner.get_node_ids()

    def push_messages(self, messages):
        messages = list(messages)
        self.meta["bytes-down"] += sum(record_bytes(m.content) for m in messages)
        return self.inner.push_messages(messages)

    def _count(self, replies: list) -> list:
        good = [m for m in replies if not m.has_error()]
        self.replies += len(good)
        self.meta["bytes-up"] += sum(record_bytes(m.content) for m in good)
        return replies

    def pull_messages(self, message_ids):
        return self._count(list(self.inner.pull_messages(message_ids)))

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        self.meta["bytes-down"] += sum(record_bytes(m.content) for m in messages)
        return self._count(list(self.inner.send_and_receive(messages, timeout=timeout)))
