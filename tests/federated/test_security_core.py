"""One node sending huge but finite weights (1e30, float32's maximum) must not make the core NaN or
ruin it: replies beyond the weight bound are rejected, every aggregated core is checked (finite,
within the bound) before it is committed, from the very first step, an unsafe step is dropped with
the strategy's state as before it, and a non-finite core is never checkpointed."""
from __future__ import annotations

import logging

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("flwr")

from edgekit.federated.config import FedConfig  # noqa: E402
from edgekit.federated.errors import CheckpointError  # noqa: E402
from edgekit.federated.server import checkpoint as ckpt  # noqa: E402
from edgekit.federated.server.loop import AsyncServer  # noqa: E402
from edgekit.federated.sim.grid import VirtualGrid  # noqa: E402
from edgekit.federated.sim.nodes import make_profiles  # noqa: E402
from edgekit.federated.strategies.base import Update  # noqa: E402

F32_MAX = float(np.finfo(np.float32).max)


def _grid(n=4):
    return VirtualGrid(make_profiles(n, seed=0, horizon=400, churn=False, sec_per_example=0.02))


def _finite(state) -> bool:
    return all(np.isfinite(v).all() for v in state.values() if v.dtype.kind == "f")


@pytest.mark.parametrize("method, payload", [("fedbuff", 1e30), ("cloned", F32_MAX), ("fedavg", 1e30)])
def test_huge_weights_from_one_node_never_reach_the_core(tmp_path, caplog, method, payload):
    from edgekit.federated.client import train_clone
    from edgekit.federated.state import state_to_record

    grid = _grid()
    evil = next(iter(grid.profiles))

    def client(msg, ctx):
        reply = train_clone(msg, ctx)
        if ctx.node_id == evil:
            arrays = reply.content.array_records["arrays"]
            huge = {k: np.full(a.numpy().shape, payload, a.numpy().dtype) if a.numpy().dtype.kind == "f"
                    else a.numpy() for k, a in arrays.items()}
            reply.content["arrays"] = state_to_record(huge)
        return reply

    grid.client_fn = client
    cfg = FedConfig(method=method, buffer_size=2, max_versions=3, max_time=2000.0, poll=1.0,
                    checkpoint_dir=str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="edgekit.federated"):
        res = AsyncServer(grid, cfg).run()
    assert res["version"] == 3 and "exceed the limit" in caplog.text
    st = ckpt.load(tmp_path)
    assert _finite(st.core) and (st.served is None or _finite(st.served))
    assert res["final_acc"] > res["curve"][0]["acc"]  # the others' updates still trained the core


@pytest.mark.parametrize("method, poison", [("fedbuff", 1e30), ("fedbuff", float("nan")), ("cloned", F32_MAX)])
def test_an_unsafe_step_is_dropped_from_the_very_first_step(tmp_path, caplog, method, poison):
    """Past the reply checks (as if a check were missing), a step towards poisoned weights: the
    core stays at version 0, the strategy's state is as before the step and its buffer is emptied,
    and the checkpoint holds the finite core."""
    srv = AsyncServer(_grid(), FedConfig(method=method, buffer_size=2, screen=False, checkpoint_dir=str(tmp_path)))
    core0 = {k: v.copy() for k, v in srv.core.items()}
    good = {k: (v + 0.01).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in core0.items()}
    with np.errstate(all="ignore"):
        bad = {k: np.full_like(v, poison) if v.dtype.kind == "f" else v for k, v in core0.items()}
    srv.strategy.add(Update(1, 0, 50, good), srv.history)
    srv.strategy.add(Update(2, 0, 50, bad), srv.history)
    before = srv.strategy.state_dict()
    with caplog.at_level(logging.WARNING, logger="edgekit.federated"), np.errstate(all="ignore"):
        assert srv.maybe_aggregate()
    assert srv.version == 0 and all(np.array_equal(srv.core[k], core0[k]) for k in core0)
    assert "core step dropped" in caplog.text and srv.meta["agg-stats"]["unsafe"] == 1
    after = srv.strategy.state_dict()
    assert after["buffer"] == [] and {k: v for k, v in before.items() if not k.startswith("buffer")}.keys() == \
        {k: v for k, v in after.items() if not k.startswith("buffer")}.keys()
    if method == "cloned":
        assert srv.strategy.cache == {} and srv.strategy.val_hist == []  # as before the step
    st = ckpt.load(tmp_path)
    assert st.version == 0 and _finite(st.core)


def test_a_non_finite_core_is_never_checkpointed(tmp_path):
    core = {"w": np.array([1.0, np.nan], np.float32)}
    with pytest.raises(CheckpointError, match="non-finite"):
        ckpt.save(tmp_path, ckpt.ServerState("fedbuff", core, 1, 0, {"curve": []}))
    assert not list(tmp_path.iterdir())
    ok = {"w": np.ones(2, np.float32)}
    ckpt.save(tmp_path, ckpt.ServerState("fedbuff", ok, 1, 0, {"curve": []}))
    with pytest.raises(CheckpointError, match="non-finite"):
        ckpt.save(tmp_path, ckpt.ServerState("fedbuff", ok, 2, 0, {"curve": []}, served=core))
    assert ckpt.load(tmp_path).version == 1  # the last good checkpoint stays
