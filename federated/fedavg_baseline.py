"""The synchronous baseline in the same harness: Flower's own FedAvg strategy, driven one round at
a time by the AsyncServer, with a Grid wrapper that counts the model bytes sent and received."""
from __future__ import annotations

import logging

from flwr.app import ConfigRecord, Message
from flwr.serverapp import Grid

from .models import State, record_bytes

log = logging.getLogger("edgekit.federated")


def flower_fedavg(**kw):
    """Flower's own FedAvg (flwr.serverapp.strategy), with replies of the wrong shape dropped
    (and the reason logged) before Flower aggregates, so one bad client cannot crash a round."""
    from flwr.serverapp.strategy import FedAvg

    from .models import record_to_state, shape_mismatch
    from .strategies import _reply_problem

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


def run_fedavg(server) -> dict:
    """Flower's FedAvg on ``server`` (an AsyncServer), one ``strategy.start`` round at a time so
    that time limits, checkpoints, the served EMA and the curve work as for the async methods."""
    from .models import merge_fixed, record_to_state, state_to_record

    strategy = flower_fedavg()
    strategy.reference = server.core
    grid = CountingGrid(server.grid, server.meta)
    server.wait_for_nodes()
    while not server.done():
        res = strategy.start(grid=grid, initial_arrays=state_to_record(server.core), num_rounds=1,
                             timeout=server.cfg.deadline,
                             train_config=ConfigRecord(server.client_config()))
        if res.arrays is not None and len(res.arrays):
            server.core = merge_fixed(record_to_state(res.arrays), server.core)  # Flower averages every array
        server._update_served()  # the same serving EMA option as the async methods (per round)
        n = grid.replies
        grid.replies = 0
        server.version += 1
        server.accepted += n
        server._record(n)
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
