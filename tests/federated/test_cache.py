"""Tests of the cloned method's cached updates (MIFA-style, ``cached_updates``): a core step
averages every node's latest kept update, age-discounted, so a fast node counts once per step and
a node that went offline still counts until its update is ``max_staleness`` versions old; a step
the guard rejects leaves the cache as it was; a node whose latest update is dropped, or is an
at-chance clone, leaves the cache; the cache survives a server restart."""
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
from edgekit.federated.models import build_model, get_state, set_state, train_local  # noqa: E402
from edgekit.federated.strategies.base import Update  # noqa: E402
from tests.federated.helpers import cloned  # noqa: E402

D = 0.01  # the size of every crafted update, per weight


@pytest.fixture(scope="module")
def core(fed_digits):
    m = build_model("mlp", 64, 10)
    train_local(m, fed_digits.pool_x, fed_digits.pool_y, epochs=1, lr=0.05, seed=0)
    return get_state(m)


def _agg(fed_digits, **kw):
    kw.setdefault("epochs", 0)
    return cloned(fed_digits, **kw)


def _step(agg, core, version, signs_nodes, base=None):
    """Buffer one +-D update per (sign, node) made on ``core`` at ``base`` (default: ``version``),
    aggregate at ``version``; returns the mean step of one bias vector."""
    base = version if base is None else base
    for sign, node in signs_nodes:
        agg.add(Update(node, base, 50, {k: (v + sign * D).astype(v.dtype) for k, v in core.items()}),
                {base: core})
    new, info = agg.aggregate(core, version)
    return float(np.mean(new["net.0.bias"] - core["net.0.bias"])), info


def test_a_step_averages_every_nodes_latest_update(fed_digits, core):
    kw = dict(buffer_size=2, screen=False, clip=False, staleness="none", max_staleness=2)
    a = _agg(fed_digits, **kw)
    assert _step(a, core, 0, [(+1, 1), (+1, 2)])[0] == pytest.approx(D, rel=1e-3)
    # a fast node 3 sends two -D updates: it counts once, beside nodes 1 and 2's latest (+D each)
    assert _step(a, core, 1, [(-1, 3), (-1, 3)])[0] == pytest.approx(D / 3, rel=1e-3)
    off = _agg(fed_digits, cached_updates=False, **kw)  # the buffer alone: node 3 decides the step
    _step(off, core, 0, [(+1, 1), (+1, 2)])
    assert _step(off, core, 1, [(-1, 3), (-1, 3)])[0] == pytest.approx(-D, rel=1e-3)
    assert off.cache == {}
    # version 3: nodes 1 and 2's updates (base 0) are older than max_staleness 2 and leave the
    # cache; node 3's (base 1) stays: (-D + D) / 2
    assert _step(a, core, 3, [(+1, 4), (+1, 4)])[0] == pytest.approx(0.0, abs=1e-7)
    assert sorted(a.cache) == [3, 4]
    # the sqrt staleness discount applies to a cached update by its age at every step
    b = _agg(fed_digits, **{**kw, "staleness": "sqrt", "max_staleness": 20})
    _step(b, core, 0, [(+1, 1), (+1, 2)])
    got = _step(b, core, 3, [(+1, 3), (+1, 3)])[0]  # two updates of age 3, one of age 0
    assert got == pytest.approx(D * (2 / np.sqrt(4) + 1) / 3, rel=1e-3)


def _honest(fed_digits, core, n):
    """``n`` honest non-IID clones of ``core`` (nodes 100, 101, ...), 2 local epochs each."""
    ups = []
    for i, part in enumerate(dirichlet_partition(fed_digits.pool_y, n, 0.5, 0, min_size=8)):
        t = set_state(build_model("mlp", 64, 10), core)
        train_local(t, fed_digits.pool_x[part], fed_digits.pool_y[part], epochs=2, lr=0.05, seed=i)
        ups.append(Update(100 + i, 0, len(part), get_state(t)))
    return ups


def test_a_guarded_step_leaves_the_cache_as_it_was(fed_digits, core):
    ups = _honest(fed_digits, core, 4)
    # an overshooting server step (lr 25) lowers validation accuracy: the guard keeps the core
    a = _agg(fed_digits, buffer_size=4, guard=0.03, server_lr=25.0, guard_window=1)
    a.cache = {7: (0, 50.0, {k: np.zeros_like(v) for k, v in core.items()})}
    for u in ups:
        a.add(u, {0: core})
    new, info = a.aggregate(core, 0)
    assert info.get("guarded") == 1 and all(np.array_equal(new[k], core[k]) for k in core)
    assert list(a.cache) == [7]  # the rejected updates do not push the next step
    ok = _agg(fed_digits, buffer_size=4, guard=0.03, guard_window=1)
    for u in ups:
        ok.add(u, {0: core})
    _, info = ok.aggregate(core, 0)
    assert "guarded" not in info and sorted(ok.cache) == [100, 101, 102, 103]


def test_the_cache_survives_a_restart(tmp_path):
    from edgekit.federated.server.loop import AsyncServer
    from edgekit.federated.sim.grid import VirtualGrid
    from edgekit.federated.sim.nodes import make_profiles

    grid = VirtualGrid(make_profiles(4, seed=0, horizon=400, churn=False, sec_per_example=0.02)
                       )
    kw = dict(method="cloned", dataset="digits", buffer_size=2, deadline=60.0, poll=1.0,
              max_time=2000.0, checkpoint_dir=str(tmp_path))
    srv = AsyncServer(grid, FedConfig(max_versions=3, **kw))
    srv.run()
    cache = srv.strategy.cache
    assert cache  # filled by the run's steps
    b, w, d = next(iter(cache.values()))
    cache[2**64 - 1] = (b, 2 * w, {k: -v for k, v in d.items()})  # real Flower node ids are uint64
    srv.save()
    assert ckpt.load(tmp_path).strategy["cache"]
    back = AsyncServer(grid, FedConfig(max_versions=4, **kw)).strategy.cache
    assert sorted(back) == sorted(cache)
    for n, (b, w, d) in cache.items():
        assert back[n][:2] == (b, w) and sorted(back[n][2]) == sorted(d)
        assert all(np.array_equal(back[n][2][k], d[k]) for k in d)


def test_a_node_whose_latest_update_is_dropped_leaves_the_cache(fed_digits, core):
    """A label flipper whose update was cached (e.g. while the core was at chance) stops counting
    once an update of it fails screening; honest nodes' entries stay, even after a guarded step."""
    honest = _honest(fed_digits, core, 3)
    flip = set_state(build_model("mlp", 64, 10), core)
    train_local(flip, fed_digits.pool_x, (fed_digits.pool_y + 1) % 10, epochs=3, lr=0.05, seed=9)
    zero = {k: np.zeros_like(v) for k, v in core.items()}
    for guarded in (False, True):
        a = _agg(fed_digits, buffer_size=4, guard=0.03, guard_window=5, refill=False)
        if guarded:  # recent cores scored 1.0 on validation: the guard keeps the core
            a.val_hist = [1.0]
        a.cache = {7: (0, 50.0, zero), 8: (0, 50.0, zero)}
        for u in honest + [Update(7, 0, 50, get_state(flip))]:
            a.add(u, {0: core})
        _, info = a.aggregate(core, 0)
        assert info["dropped"] == 1 and info.get("evicted") == 1 and bool(info.get("guarded")) == guarded
        assert sorted(a.cache) == ([8] if guarded else [8, 100, 101, 102])


def test_an_at_chance_clone_steps_once_but_is_not_cached(fed_digits, core):
    """A clone that predicts one class everywhere (at chance) while the core is competent moves
    this step but does not stay in the cache, where it would count at every later step; its
    node's older entry leaves with it."""
    honest = _honest(fed_digits, core, 3)
    one = set_state(build_model("mlp", 64, 10), core)
    threes = fed_digits.pool_y == 3
    train_local(one, fed_digits.pool_x[threes][:60], fed_digits.pool_y[threes][:60], epochs=2, lr=0.05, seed=5)

    def run(extra, guarded=False):
        a = _agg(fed_digits, buffer_size=3 + len(extra), refill=False)
        if guarded:  # recent cores scored 1.0 on validation: the guard keeps the core
            a.val_hist = [1.0]
        a.cache = {7: (0, 50.0, {k: np.zeros_like(v) for k, v in core.items()})}
        for u in honest + extra:
            a.add(u, {0: core})
        new, info = a.aggregate(core, 0)
        return new, info, sorted(a.cache)

    new, info, cached = run([Update(7, 0, 60, get_state(one))])
    assert info.get("at-chance") == 1 and info["used"] == 4 and cached == [100, 101, 102]
    without, _, cached = run([])
    assert cached == [7, 100, 101, 102]
    assert not np.allclose(new["net.0.weight"], without["net.0.weight"])  # it did step
    _, info, cached = run([Update(7, 0, 60, get_state(one))], guarded=True)
    assert info.get("guarded") == 1 and cached == []  # the cache as it was, less node 7
