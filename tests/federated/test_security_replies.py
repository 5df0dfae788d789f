"""A hostile node's reply costs that reply only: every field (sender, records, each metric's type,
finiteness and range, each array's keys, shape, dtype, finiteness and size) is checked before
anything of it touches the server's state; a bad reply is rejected with a logged reason and the
run goes on. Fuzzed with hypothesis at the message level and at the server's ``accept``."""
from __future__ import annotations

import copy
import logging
import math

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("flwr")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edgekit.federated.config import FedConfig  # noqa: E402
from edgekit.federated.server.loop import AsyncServer  # noqa: E402
from edgekit.federated.server.messages import read_reply  # noqa: E402
from edgekit.federated.sim.grid import VirtualGrid  # noqa: E402
from edgekit.federated.sim.nodes import make_profiles  # noqa: E402
from edgekit.federated.strategies.base import Rejected  # noqa: E402

NODE = 1000


@pytest.fixture(scope="module")
def server():
    """A cloned server on 3 virtual nodes (no run: replies are fed to ``accept`` directly)."""
    grid = VirtualGrid(make_profiles(3, seed=0, horizon=400, churn=False, sec_per_example=0.02))
    return AsyncServer(grid, FedConfig(method="cloned", buffer_size=5, max_versions=3, max_time=400.0))


def _reply(core, metrics=None, arrays=None, src=NODE):
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

    instruction = Message(RecordDict({}), dst_node_id=src, message_type="train")
    good = {"num-examples": 50, "base-version": 0, "partition-id": 0, "train-loss": 0.5, "train-acc": 0.8}
    state = {k: v.copy() for k, v in core.items()} if arrays is None else arrays
    return Message(RecordDict({"arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in state.items()}),
                               "metrics": MetricRecord(good if metrics is None else metrics)}), reply_to=instruction)


def _read(server, reply, node=NODE, version=0):
    return read_reply(reply, node=node, version=version, reference=server.core, magnitude=server.magnitude)


NAN, INF = float("nan"), float("inf")
BAD_METRICS = [
    ({"num-examples": NAN, "base-version": 0}, "not an integer"),
    ({"num-examples": INF, "base-version": 0}, "not an integer"),
    ({"num-examples": 2.5, "base-version": 0}, "not an integer"),
    ({"num-examples": 50.0, "base-version": 0}, "not an integer"),
    ({"num-examples": -3, "base-version": 0}, "no training examples"),
    ({"num-examples": 0, "base-version": 0}, "no training examples"),
    ({"num-examples": 2**62, "base-version": 0}, "out of range"),
    ({"num-examples": [1, 2], "base-version": 0}, "not an integer"),
    ({"base-version": 0}, "no training examples"),
    ({"num-examples": 50}, "no base-version"),
    ({"num-examples": 50, "base-version": NAN}, "base-version nan is not an integer"),
    ({"num-examples": 50, "base-version": 0.0}, "not an integer"),
    ({"num-examples": 50, "base-version": 7}, "does not match the dispatched version 0"),
    ({"num-examples": 50, "base-version": 0, "partition-id": NAN}, "partition-id"),
    ({"num-examples": 50, "base-version": 0, "partition-id": INF}, "partition-id"),
    ({"num-examples": 50, "base-version": 0, "partition-id": 1.5}, "partition-id"),
    ({"num-examples": 50, "base-version": 0, "partition-id": 2**40}, "partition-id"),
    ({"num-examples": 50, "base-version": 0, "partition-id": -2}, "partition-id"),
    ({"num-examples": 50, "base-version": 0, "train-loss": NAN}, "train-loss"),
    ({"num-examples": 50, "base-version": 0, "train-acc": 3.0}, "train-acc"),
]


@pytest.mark.parametrize("metrics, says", BAD_METRICS)
def test_a_bad_metric_is_named(server, metrics, says):
    with pytest.raises(Rejected, match=says):
        _read(server, _reply(server.core, metrics))


def test_bad_arrays_and_a_wrong_sender_are_named(server):
    core = server.core
    k = next(iter(core))
    cases = [({kk: v for kk, v in core.items() if kk != k}, "keys differ"),
             ({**core, "extra": np.zeros(3, np.float32)}, "keys differ"),
             ({**core, k: np.zeros((2, 2), np.float32)}, "has shape"),
             ({**core, k: core[k].astype(np.float64)}, "has dtype"),
             ({**core, k: np.full_like(core[k], np.nan)}, "NaN or Inf"),
             ({**core, k: np.full_like(core[k], np.inf)}, "NaN or Inf"),
             ({**core, k: np.full_like(core[k], 1e30)}, "exceed the limit"),
             ({**core, k: np.full_like(core[k], np.finfo(np.float32).max)}, "exceed the limit")]
    for arrays, says in cases:
        with pytest.raises(Rejected, match=says):
            _read(server, _reply(core, arrays=arrays))
    with pytest.raises(Rejected, match="not from node 1000"):
        _read(server, _reply(core, src=1001))
    from flwr.app import Message, RecordDict

    lacking = Message(RecordDict({}), reply_to=_reply(core))
    with pytest.raises(Rejected, match="lacks"):
        _read(server, lacking, node=lacking.metadata.src_node_id)
    upd = _read(server, _reply(core))  # the honest reply passes
    assert upd.num_examples == 50 and upd.metrics["partition-id"] == 0.0


def _snapshot(server):
    s = server.strategy
    return (server.accepted, len(s.buffer), dict(s.claims), dict(server.meta.get("by-partition", {})),
            copy.deepcopy(dict(server.rejected)))


def test_a_bad_reply_touches_no_state_and_is_logged(server, caplog):
    before = _snapshot(server)
    with caplog.at_level(logging.WARNING, logger="edgekit.federated"):
        for metrics, says in BAD_METRICS:
            server.accept(NODE, 0, _reply(server.core, metrics))
            assert says in caplog.text
    after = _snapshot(server)
    assert after[:4] == before[:4]  # nothing accepted, buffered, claimed or tallied
    assert sum(after[4].values()) == sum(before[4].values()) + len(BAD_METRICS)
    server.accept(NODE, 0, _reply(server.core))  # an honest reply still gets in afterwards
    assert server.accepted == before[0] + 1 and len(server.strategy.buffer) == before[1] + 1


NUMBER = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                   st.lists(st.integers(-10, 10), max_size=3), st.lists(st.floats(allow_nan=True), max_size=3))
METRICS = st.dictionaries(st.sampled_from(["num-examples", "base-version", "partition-id", "train-loss",
                                           "train-acc", "other"]), NUMBER, max_size=6)


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(metrics=METRICS, scale=st.one_of(st.just(1.0), st.floats(allow_nan=True, allow_infinity=True, width=32)))
def test_fuzzed_replies_are_read_or_rejected_never_crash(server, metrics, scale):
    core = server.core
    arrays = {k: (v * np.float32(scale)).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in core.items()}
    try:
        with np.errstate(all="ignore"):
            upd = _read(server, _reply(core, metrics, arrays))
    except Rejected:
        return
    # what gets through is usable: an integer example count, finite metrics, finite bounded weights
    assert isinstance(upd.num_examples, int) and 0 < upd.num_examples <= 2**53
    assert all(math.isfinite(v) for v in upd.metrics.values())
    assert server.magnitude.problem(upd.state) is None


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(metrics=METRICS)
def test_fuzzed_replies_at_the_server_never_crash_it(server, metrics):
    before = _snapshot(server)
    server.accept(NODE, 0, _reply(server.core, metrics))
    after = _snapshot(server)
    if after[0] == before[0]:  # rejected: no state touched
        assert after[1:4] == before[1:4]
    server.strategy.buffer.clear()


def test_a_run_with_a_node_sending_garbage_metrics_completes(caplog):
    """The crash the issue names: a non-finite num-examples / partition-id ended the ServerApp."""
    from edgekit.federated.client import train_clone

    grid = VirtualGrid(make_profiles(4, seed=0, horizon=400, churn=False, sec_per_example=0.02))
    evil = next(iter(grid.profiles))

    def client(msg, ctx):
        from flwr.app import Message, MetricRecord, RecordDict

        reply = train_clone(msg, ctx)
        if ctx.node_id != evil:
            return reply
        bad = {"num-examples": float("nan"), "base-version": 0, "partition-id": float("inf")}
        return Message(RecordDict({"arrays": reply.content["arrays"], "metrics": MetricRecord(bad)}), reply_to=msg)

    grid.client_fn = client
    with caplog.at_level(logging.WARNING, logger="edgekit.federated"):
        res = AsyncServer(grid, FedConfig(method="fedbuff", buffer_size=2, max_versions=3, max_time=2000.0,
                                          poll=1.0)).run()
    assert res["version"] == 3 and str(evil) in caplog.text and "not an integer" in caplog.text
    assert sum(res["rejected"].values()) >= 1
