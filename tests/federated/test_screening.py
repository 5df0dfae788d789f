"""Tests of the robust screening / aggregation rules of the cloned method (edgekit.federated):
update-norm screening against the history of kept updates, refilling the buffer until K
teachers passed screening, the step guard's median reference, participation-rate weighting,
the server step schedule, the cap on claimed example counts, the serving-EMA warm-up, that
their state survives a restart, update sizes compared per local SGD step, and robust references
taken over nodes."""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("flwr")
torch.set_num_threads(1)

from edgekit.federated.server import checkpoint as ckpt  # noqa: E402
from edgekit.federated.config import FedConfig  # noqa: E402
from edgekit.federated.data import dirichlet_partition  # noqa: E402
from edgekit.federated.models import accuracy, build_model, get_state, set_state, train_local  # noqa: E402
from edgekit.federated.strategies.base import Update  # noqa: E402
from tests.federated.helpers import cloned  # noqa: E402


@pytest.fixture(scope="module")
def trained(fed_digits):
    """A core trained a little, and 4 honest non-IID clones of it (full states)."""
    m = build_model("mlp", 64, 10)
    train_local(m, fed_digits.pool_x, fed_digits.pool_y, epochs=1, lr=0.05, seed=0)
    core = get_state(m)
    ups = []
    for i, part in enumerate(dirichlet_partition(fed_digits.pool_y, 4, 0.5, 0, min_size=8)):
        t = set_state(build_model("mlp", 64, 10), core)
        train_local(t, fed_digits.pool_x[part], fed_digits.pool_y[part], epochs=2, lr=0.05, seed=i)
        ups.append(Update(100 + i, 0, len(part), get_state(t)))
    return core, ups


def _agg(fed_digits, **kw):
    kw.setdefault("epochs", 0)
    return cloned(fed_digits, **kw)


def _random_update(core, node, seed):
    rng = np.random.default_rng(seed)
    return Update(node, 0, 50, {k: rng.normal(0, 1, v.shape).astype(v.dtype) for k, v in core.items()})


def _norm(core, st):
    return float(np.sqrt(sum(float(((st[k] - core[k]) ** 2).sum()) for k in core)))


def test_update_norm_screening_catches_attackers_that_outvote_the_buffer(fed_digits, trained):
    from edgekit.federated.strategies.screening import screen_teachers

    core, ups = trained
    # 2 honest + 2 random-weight teachers: within this buffer the random ones are not outliers
    buf = [ups[0].state, ups[1].state, _random_update(core, 7, 1).state, _random_update(core, 8, 2).state]
    models = [set_state(build_model("mlp", 64, 10), s) for s in buf]
    norms = [_norm(core, s) for s in buf]
    logs = np.log([_norm(core, u.state) for u in ups] * 3)  # 12 kept honest updates so far
    ref = (float(np.median(logs)), float(1.4826 * np.median(np.abs(logs - np.median(logs)))))
    with_ref = screen_teachers(models, fed_digits.val_x, fed_digits.val_y, 10, core_state=core,
                               update_norms=norms, norm_ref=ref)
    assert with_ref.kept == [0, 1], with_ref.dropped
    assert "update norm" in with_ref.dropped[2] and "update norm" in with_ref.dropped[3]


def test_aggregator_learns_the_norm_reference_from_kept_updates(fed_digits, trained):
    core, ups = trained
    a = _agg(fed_digits, buffer_size=4, guard=1.0)
    assert a.norm_ref() is None
    for _ in range(3):
        for u in ups:
            a.add(u, {0: core})
        a.aggregate(core, 0)
    med, _ = a.norm_ref()
    honest = np.log([_norm(core, u.state) / np.ceil(u.num_examples / 32) for u in ups])  # per step
    assert len(a.norm_hist) == 12 and honest.min() <= med <= honest.max()
    a.add(_random_update(core, 9, 3), {0: core})
    for u in ups[:3]:
        a.add(u, {0: core})
    _, info = a.aggregate(core, 0)
    assert info["dropped"] >= 1 and len(a.norm_hist) == 12  # the attacker never enters the history


def test_refill_waits_for_k_screened_teachers(fed_digits, trained):
    core, ups = trained
    a = _agg(fed_digits, buffer_size=3, guard=1.0)
    for u in ups[:2]:
        a.add(u, {0: core})
    a.add(_random_update(core, 9, 4), {0: core})
    new, info = a.aggregate(core, 0)
    assert info.get("deferred") == 1 and info["dropped"] == 1
    assert all(np.array_equal(new[k], core[k]) for k in core)  # the core did not move
    assert [u.node_id for u in a.buffer] == [ups[0].node_id, ups[1].node_id]
    assert not a.ready(0.0)
    a.add(ups[2], {0: core})
    new, info = a.aggregate(core, 0)
    assert "deferred" not in info and info["used"] == 3 and not a.buffer
    assert not all(np.array_equal(new[k], core[k]) for k in core)
    # without refill the same buffer is aggregated at once from 2 teachers
    b = _agg(fed_digits, buffer_size=3, guard=1.0, refill=False)
    for u in ups[:2]:
        b.add(u, {0: core})
    b.add(_random_update(core, 9, 4), {0: core})
    _, info = b.aggregate(core, 0)
    assert info["used"] == 2 and "deferred" not in info


def test_server_does_not_bump_the_version_on_a_deferred_buffer():
    from edgekit.federated.server.loop import AsyncServer
    from edgekit.federated.sim.grid import VirtualGrid
    from edgekit.federated.sim.nodes import make_profiles

    prof = make_profiles(4, seed=0, horizon=400, churn=False, sec_per_example=0.02)
    grid = VirtualGrid(prof)
    srv = AsyncServer(grid, FedConfig(method="cloned", dataset="digits", max_versions=2,
                                      buffer_size=2, deadline=60.0, poll=1.0, max_time=2000.0))
    calls = []
    real = srv.strategy.aggregate

    def first_deferred(core, version):
        calls.append(version)
        if len(calls) == 1:
            srv.strategy.buffer = srv.strategy.buffer[:1]
            return core, {"used": 0, "dropped": 1, "deferred": 1}
        return real(core, version)

    srv.strategy.aggregate = first_deferred
    res = srv.run()
    assert calls[:2] == [0, 0] and res["version"] == 2 and res["agg_stats"]["deferred"] == 1


def test_step_guard_compares_with_the_median_of_recent_cores(fed_digits, trained):
    core, ups = trained
    v_core = accuracy(set_state(build_model("mlp", 64, 10), core), fed_digits.val_x, fed_digits.val_y)

    def step(window):
        # an overshooting server step (lr 25) lowers validation accuracy well below the core's
        a = _agg(fed_digits, buffer_size=4, guard=0.03, server_lr=25.0, guard_window=window)
        a.val_hist = [0.10, 0.10, 0.10, 0.10, v_core]  # the core is far above the recent ones
        for u in ups:
            a.add(u, {0: core})
        return a.aggregate(core, 0)

    _, one = step(1)
    new, five = step(5)
    assert one.get("guarded") == 1  # measured against the (possibly lucky) current core
    assert "guarded" not in five
    v_new = accuracy(set_state(build_model("mlp", 64, 10), new), fed_digits.val_x, fed_digits.val_y)
    assert 0.10 < v_new < v_core - 0.03


def _delta_updates(core, signs_nodes, scale=0.01):
    return [Update(node, 0, 50, {k: (v + sign * scale).astype(v.dtype) for k, v in core.items()})
            for sign, node in signs_nodes]


def test_the_server_step_is_the_buffer_mean_or_the_cache_mean(fed_digits, trained):
    core, _ = trained
    ups = _delta_updates(core, [(+1, 1), (+1, 1), (-1, 2)])  # node 1 (fast) sent 2, node 2 one

    def step(version=0, **kw):
        kw.setdefault("cached_updates", False)  # the buffer's own mean (the cache: test_cache.py)
        a = _agg(fed_digits, buffer_size=3, screen=False, **kw)
        for u in ups:
            a.add(u, {0: core})
        new, _ = a.aggregate(core, version)
        return float(np.mean(new["net.0.bias"] - core["net.0.bias"]))

    assert step() == pytest.approx(0.01 / 3, rel=1e-3)  # (2*(+d) - d) / 3
    assert step(cached_updates=True) == pytest.approx(0.0, abs=1e-7)  # node 1's latest only: (d - d) / 2
    assert step(3) == pytest.approx(0.01 / 6, rel=1e-3)  # 3 versions stale: s = 1/sqrt(1+3) = 1/2
    assert step(3, staleness="none") == pytest.approx(0.01 / 3, rel=1e-3)


def test_an_inflated_example_count_cannot_outweigh_the_buffer(fed_digits, trained):
    core, _ = trained
    # 5 honest nodes step +d with 100 examples each; node 9 steps -d and claims 10**9 examples

    def step(**kw):
        a = _agg(fed_digits, buffer_size=6, screen=False, clip=False, staleness="none", **kw)
        ups = _delta_updates(core, [(+1, 1), (+1, 2), (+1, 3), (+1, 4), (+1, 5), (-1, 9)])
        for u, n in zip(ups, (100,) * 5 + (10**9,)):
            u.num_examples = n
            a.add(u, {0: core})
        new, _ = a.aggregate(core, 0)
        return float(np.mean(new["net.0.bias"] - core["net.0.bias"])), a

    trusted, _ = step(example_cap=0)
    assert trusted == pytest.approx(-0.01, rel=1e-3)  # the claim alone decides the step
    capped, a = step()  # weighted as 4 x the median claim (100): (5*100 - 400) / 900 * d
    assert capped == pytest.approx(0.01 * 100 / 900, rel=1e-3)
    assert a.claims[9] == 10**9 and a.examples(Update(1, 0, 100, {})) == 100
    with pytest.raises(Exception, match="example-cap"):
        FedConfig(example_cap=-1)


def test_serving_ema_warmup():
    from edgekit.federated.server.loop import AsyncServer
    from edgekit.federated.sim.grid import VirtualGrid
    from edgekit.federated.sim.nodes import make_profiles

    grid = VirtualGrid(make_profiles(2, seed=0, horizon=100, churn=False))

    def served_after(warm=None):  # None: the library default
        kw = {} if warm is None else {"ema_warmup": warm}
        srv = AsyncServer(grid, FedConfig(method="cloned", dataset="digits", ema=0.9, **kw))
        base = {k: np.zeros_like(v) for k, v in srv.core.items()}
        srv.core = base
        srv.update_served()  # the first version is copied
        srv.core = {k: np.ones_like(v) for k, v in base.items()}
        srv.update_served()
        return float(srv.served["net.0.bias"][0])

    assert served_after(False) == pytest.approx(0.1)
    assert served_after(True) == pytest.approx(1 - 2 / 11)  # decay min(0.9, (1+1)/(10+1))
    # on by default (session 14): without it the served model keeps the random init's weight 0.9**n
    assert served_after() == served_after(True)


def test_screening_state_survives_a_restart(tmp_path):
    from edgekit.federated.server.loop import AsyncServer
    from edgekit.federated.sim.grid import VirtualGrid
    from edgekit.federated.sim.nodes import make_profiles

    prof = make_profiles(4, seed=0, horizon=400, churn=False, sec_per_example=0.02)
    grid = VirtualGrid(prof)
    kw = dict(method="cloned", dataset="digits", buffer_size=2, deadline=60.0, poll=1.0,
              max_time=2000.0, checkpoint_dir=str(tmp_path))
    srv = AsyncServer(grid, FedConfig(max_versions=3, **kw))
    srv.run()
    agg = srv.strategy
    assert agg.norm_hist and agg.val_hist
    agg.norm_nodes[-1] = 2**64 - 1  # real Flower node ids are uint64 (a deployment run crashed on one)
    srv.save()
    st = ckpt.load(tmp_path)
    assert st.strategy["norm_hist"] and st.strategy["val_hist"] and st.strategy["norm_nodes"][-1] == 2**64 - 1
    back = AsyncServer(grid, FedConfig(max_versions=4, **kw))
    assert back.resumed
    assert back.strategy.norm_hist == pytest.approx(agg.norm_hist)
    assert back.strategy.norm_nodes == agg.norm_nodes and len(agg.norm_nodes) == len(agg.norm_hist)
    assert back.strategy.val_hist == pytest.approx(agg.val_hist)
    assert agg.claims and back.strategy.claims == agg.claims
    assert back.ema_updates == srv.ema_updates


def _scaled_update(core, u, factor, node, examples):
    """``u``'s step from ``core`` times ``factor``, as node ``node`` claiming ``examples``."""
    return Update(node, 0, examples, {k: (core[k] + factor * (u.state[k] - core[k])).astype(core[k].dtype)
                                      for k in core})


def test_update_sizes_are_compared_per_local_step(fed_digits, trained):
    """A clone's update grows with the SGD steps it took: a node with 4x the data (4x the steps)
    is not an outlier among small nodes; the same size from a node claiming 1x the data is."""
    core, ups = trained

    def buffered(**kw):
        a = _agg(fed_digits, buffer_size=5, guard=1.0, batch_size=32, **kw)
        small = [_scaled_update(core, ups[0], f / 4, 100 + i, 64) for i, f in enumerate((1.0, 0.9, 1.1))]
        rich = _scaled_update(core, ups[0], 1.0, 200, 256)     # 4x the data: 8 steps instead of 2
        liar = _scaled_update(core, ups[0], 1.0, 300, 64)      # the same step, 2 steps claimed
        for u in small + [rich, liar]:
            a.add(u, {0: core})
        _, info = a.aggregate(core, 0)
        return info, {u.node_id for u in a.buffer}

    info, waiting = buffered()
    assert info.get("deferred") == 1 and 200 in waiting and 300 not in waiting, (info, waiting)
    info, waiting = buffered(norm_per_step=False)  # raw sizes: the data-rich node is dropped too
    assert info.get("deferred") == 1 and 200 not in waiting and 300 not in waiting, (info, waiting)


def test_a_fast_node_does_not_define_the_normal_update_size(fed_digits, trained):
    """Robust references are taken over nodes: 3 small updates of one fast node in a buffer do not
    make the other nodes' updates outliers; an update far above every node's still is."""
    from edgekit.federated.strategies.screening import screen_teachers

    core, ups = trained
    models = [set_state(build_model("mlp", 64, 10), ups[0].state) for _ in range(6)]

    def dropped(norms, nodes):
        sc = screen_teachers(models[:len(norms)], fed_digits.val_x, fed_digits.val_y, 10,
                             core_state=core, update_norms=norms, nodes=nodes)
        return sorted(sc.dropped)

    norms = [0.05, 0.05, 0.05, 0.2, 0.25]
    assert dropped(norms, [1, 1, 1, 2, 3]) == []
    assert dropped(norms, None) == [3, 4]  # per update: the fast node's median made 2 nodes outliers
    # random weights: about 120x an honest step per step in the digits runs (36 vs 0.3)
    assert dropped(norms + [30.0], [1, 1, 1, 2, 3, 4]) == [5]


def test_the_norm_clip_takes_its_median_over_nodes(fed_digits, trained):
    """Each update is clipped to the median over nodes of their update sizes: a fast node with 3
    large updates in a buffer of 5 does not set the clip for the two other nodes."""
    core, _ = trained
    a = _agg(fed_digits, buffer_size=5, screen=False, cached_updates=False, staleness="none")
    for u in _delta_updates(core, [(+1, 1)] * 3, scale=0.1) + _delta_updates(core, [(+1, 2)], 0.01) \
            + _delta_updates(core, [(+1, 3)], 0.02):
        a.add(u, {0: core})
    new, _ = a.aggregate(core, 0)
    # node medians 0.1 / 0.01 / 0.02 -> clip at 0.02: (3 * 0.02 + 0.01 + 0.02) / 5 (per update: 0.066)
    assert float(np.mean(new["net.0.bias"] - core["net.0.bias"])) == pytest.approx(0.09 / 5, rel=1e-3)
