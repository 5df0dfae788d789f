"""The async server's dispatch: per-node deadlines (a slow node is not a dead one) and fresh
training seeds for a repeated version (no identical clones). Digits, virtual clock, tiny runs.
Also the FedAvg baseline's counting Grid."""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("flwr")
torch.set_num_threads(1)

from edgekit.federated.config import FedConfig  # noqa: E402
from edgekit.federated.server.loop import AsyncServer  # noqa: E402
from edgekit.federated.sim.grid import VirtualGrid  # noqa: E402
from edgekit.federated.sim.nodes import make_profiles  # noqa: E402


def _server(profiles, **kw):
    grid = VirtualGrid(profiles)
    cfg = FedConfig(**{**dict(method="fedbuff", dataset="digits", buffer_size=1, deadline=10.0, poll=1.0,
                              max_versions=10**6, max_time=400.0, epochs=1), **kw})
    return AsyncServer(grid, cfg)


def test_a_node_slower_than_the_deadline_still_contributes():
    prof = make_profiles(2, seed=0, horizon=400, churn=False, sec_per_example=0.02)
    srv = _server(prof)
    prof[1].sec_per_example = 25.0 / srv.grid._examples(prof[1])  # 25 units per clone: > the 10-unit deadline
    res = srv.run()
    by = srv.meta["by-partition"]
    assert res["timeouts"] >= 1  # its first clones missed the 10-unit deadline ...
    assert by.get("1", 0) >= 3, by  # ... and its deadline grew until its updates arrived
    assert srv.node_deadline(prof[1].node_id) > 10.0 >= srv.node_deadline(prof[0].node_id)
    assert srv.node_deadline(prof[1].node_id) <= srv.DEADLINE_GROWTH_MAX * 10.0


def test_a_dead_node_gets_a_growing_bounded_deadline():
    prof = make_profiles(2, seed=0, horizon=400, churn=False, sec_per_example=0.02)
    srv = _server(prof, max_time=800.0)
    dead, grid = prof[1].node_id, srv.grid
    train, schedule = grid.client_fn, grid._schedule
    to_dead = []

    def client(msg, ctx):  # node 1 stays listed but never answers (a SIGKILLed process)
        to_dead.append(msg.metadata.dst_node_id == dead)
        return train(msg, ctx)

    grid.client_fn = client
    grid._schedule = lambda t, mid, reply: None if to_dead and to_dead.pop() else schedule(t, mid, reply)
    res = srv.run()
    assert srv.meta["by-partition"].get("1", 0) == 0 and srv.meta["by-partition"].get("0", 0) > 10
    # deadlines 10, 20, 40, 80, then 80 each (bounded at 8 x): a handful of timeouts in 800 units
    assert srv.node_deadline(dead) == srv.DEADLINE_GROWTH_MAX * 10.0
    assert 5 <= res["timeouts"] <= 800 / 80 + 4


def test_a_repeated_version_is_trained_with_a_fresh_seed():
    prof = make_profiles(2, seed=0, horizon=400, churn=False, sec_per_example=0.02)
    srv = _server(prof, method="cloned", buffer_size=5)
    sent = []
    push = srv.grid.push_messages

    def record(msgs):
        msgs = list(msgs)
        sent.extend((m.metadata.dst_node_id, int(m.content.config_records["config"]["repeat"])) for m in msgs)
        return push(msgs)

    srv.grid.push_messages = record
    for _ in range(3):  # the core stays at version 0 (a buffer of 5 is not full)
        srv.dispatch()
        srv.clock.sleep(50.0)
        srv.collect()
    node0 = [r for n, r in sent if n == prof[0].node_id]
    assert node0 == [0, 1, 2]
    states = [u.state for u in srv.strategy.buffer if u.node_id == prof[0].node_id]
    assert len(states) == 3
    assert not any(np.array_equal(states[0][k], states[1][k]) for k in states[0])  # not one update thrice


def test_repeat_zero_keeps_the_old_training_seed():
    """FedAvg sends each round once (no ``repeat``): its clients train exactly as before."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from edgekit.federated.client import train_clone
    from edgekit.federated.models import build_model, get_state
    from edgekit.federated.state import record_to_state, state_to_record

    core = get_state(build_model("mlp", 64, 10))
    ctx = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 4},
                  state=RecordDict(), run_config={})
    cfg = FedConfig(dataset="digits", epochs=1).client_config(3)

    def train(extra):
        msg = Message(RecordDict({"arrays": state_to_record(core), "config": ConfigRecord({**cfg, **extra})}),
                      dst_node_id=1, message_type="train")
        return record_to_state(train_clone(msg, ctx).content.array_records["arrays"])

    a, b, c = train({}), train({"repeat": 0}), train({"repeat": 1})
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_fedavg_counting_grid_counts_replies_and_bytes_on_both_paths():
    from flwr.app import RecordDict

    from edgekit.federated.server.fedavg import CountingGrid
    from edgekit.federated.state import state_to_record

    class Reply:
        def __init__(self, err):
            self.content = RecordDict({"arrays": state_to_record({"w": np.zeros(10, np.float32)})})
            self.err = err

        def has_error(self):
            return self.err

    class Inner:
        def pull_messages(self, ids):
            return [Reply(False), Reply(True)]

        def send_and_receive(self, messages, *, timeout=None):
            return [Reply(False), Reply(False), Reply(True)]

    meta = {"bytes-down": 0, "bytes-up": 0}
    g = CountingGrid(Inner(), meta)
    assert len(g.pull_messages(["a", "b"])) == 2 and g.replies == 1  # was 0: pulls were not counted
    assert len(g.send_and_receive([])) == 3 and g.replies == 3
    assert meta["bytes-up"] == 3 * 40  # error replies carry no model
