"""Fast tests of edgekit.federated: data, distillation, screening, checkpoints, the async loop on
the virtual-clock grid (rejections, errors, resume) and the CLI. Digits only; tiny runs."""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("flwr")
torch.set_num_threads(1)

from edgekit.core.errors import DataError  # noqa: E402
from edgekit.federated.server import checkpoint as ckpt  # noqa: E402
from edgekit.federated.config import FedConfig  # noqa: E402
from edgekit.federated.data import dirichlet_partition, load_dataset, load_partition  # noqa: E402
from edgekit.federated.models import accuracy, build_model, get_state, set_state, train_local  # noqa: E402
from edgekit.federated.strategies.base import Update  # noqa: E402
from tests.federated.helpers import cloned  # noqa: E402


def _grid(n=4, **kw):
    from edgekit.federated.sim.grid import VirtualGrid
    from edgekit.federated.sim.nodes import make_profiles

    prof = make_profiles(n, seed=0, horizon=400, churn=False, sec_per_example=0.02, **kw)
    return VirtualGrid(prof), prof


def _cfg(**kw):
    base = dict(method="cloned", dataset="digits", max_versions=3, buffer_size=2, deadline=60.0,
                poll=1.0, max_time=2000.0)
    base.update(kw)
    return FedConfig(**base)


def test_dirichlet_partitions_are_disjoint_and_non_iid(fed_digits):
    parts = dirichlet_partition(fed_digits.pool_y, 10, alpha=0.1, seed=0)
    allidx = np.concatenate(parts)
    assert len(allidx) == len(np.unique(allidx)) == len(fed_digits.pool_y)
    # with alpha=0.1 a typical partition is dominated by few classes
    top_share = [np.bincount(fed_digits.pool_y[p], minlength=10).max() / max(1, len(p)) for p in parts if len(p)]
    assert np.median(top_share) > 0.4
    assert set(fed_digits.public_x.shape[1:]) == {64} and len(fed_digits.val_y) > 50


def test_empty_and_malformed_partitions_are_rejected(tmp_path):
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 64), np.float32), y=np.zeros(0, np.int64))
    np.savez(tmp_path / "shape.npz", x=np.zeros((5, 10), np.float32), y=np.zeros(5, np.int64))
    np.savez(tmp_path / "labels.npz", x=np.zeros((5, 64), np.float32), y=np.full(5, 42))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    for name, words in [("empty", "empty"), ("shape", "shape"), ("labels", "labels"), ("junk", "malformed")]:
        with pytest.raises(DataError, match=words):
            load_partition("digits", 0, 2, 0.5, 0, data_path=str(tmp_path / f"{name}.npz"))
    with pytest.raises(DataError, match="partition-id"):
        load_partition("digits", 5, 2, 0.5, 0)


def test_client_replies_error_with_reason_for_bad_data(tmp_path, caplog):
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from edgekit.federated.client import ERR_DATA, train_clone
    from edgekit.federated.state import state_to_record
    from edgekit.federated.sim.grid import VirtualGrid  # sets a local task identity

    VirtualGrid([])
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 64), np.float32), y=np.zeros(0, np.int64))
    s = load_dataset("digits", 0)
    msg = Message(RecordDict({"arrays": state_to_record(get_state(build_model("mlp", 64, 10))),
                              "config": ConfigRecord(_cfg().client_config(0))}), 7, "train")
    ctx = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 2,
                                                     "data-path": str(tmp_path / "empty.npz")},
                  state=RecordDict(), run_config={})
    with caplog.at_level(logging.WARNING, logger="edgekit.federated"):
        reply = train_clone(msg, ctx)
    assert reply.has_error() and reply.error.code == ERR_DATA and "empty" in reply.error.reason
    assert "empty" in caplog.text
    ctx.node_config.pop("data-path")
    ok = train_clone(msg, ctx)
    assert not ok.has_error()
    m = ok.content.metric_records["metrics"]
    assert m["num-examples"] > 0 and m["base-version"] == 0 and s.n_classes == 10


def test_screening_drops_malicious_teachers(fed_digits):
    from edgekit.federated.strategies.screening import screen_teachers

    core = build_model("mlp", 64, 10)
    core_state = get_state(core)
    honest = []
    for i, part in enumerate(dirichlet_partition(fed_digits.pool_y, 4, 1.0, 0)):
        m = set_state(build_model("mlp", 64, 10), core_state)
        train_local(m, fed_digits.pool_x[part], fed_digits.pool_y[part], epochs=5, lr=0.1, seed=i)
        honest.append(m)
    flipped = set_state(build_model("mlp", 64, 10), core_state)
    train_local(flipped, fed_digits.pool_x, 9 - fed_digits.pool_y, epochs=5, lr=0.1)
    rand = set_state(build_model("mlp", 64, 10),
                     {k: np.random.default_rng(0).normal(0, 1, v.shape).astype(v.dtype) for k, v in core_state.items()})
    h = get_state(honest[0])
    scaled = set_state(build_model("mlp", 64, 10), {k: core_state[k] - 10 * (h[k] - core_state[k]) for k in h})
    sc = screen_teachers(honest + [flipped, rand, scaled], fed_digits.val_x, fed_digits.val_y, 10,
                         core_state=core_state)
    assert sc.kept == [0, 1, 2, 3], sc.dropped
    assert "chance" in sc.dropped[4]


def test_distillation_transfers_and_attend_knob(fed_digits):
    from edgekit.federated.strategies.base import staleness_weight
    from edgekit.federated.strategies.distill import distill

    teacher = build_model("mlp", 64, 10, seed=1)
    train_local(teacher, fed_digits.pool_x, fed_digits.pool_y, epochs=10, lr=0.1)
    t_acc = accuracy(teacher, fed_digits.test_x, fed_digits.test_y)
    student = build_model("mlp", 64, 10, seed=2)
    before = get_state(student)
    distill(student, [teacher], [1.0], fed_digits.public_x, attend=1.0, epochs=30, lr=0.05)
    assert accuracy(student, fed_digits.test_x, fed_digits.test_y) > 0.6 * t_acc
    keep = set_state(build_model("mlp", 64, 10, seed=2), before)
    distill(keep, [teacher], [1.0], fed_digits.public_x, attend=0.0, epochs=5, lr=0.05)
    assert accuracy(keep, fed_digits.test_x, fed_digits.test_y) < 0.4  # retains its own (untrained) view
    assert staleness_weight(0) == 1.0 > staleness_weight(3) > staleness_weight(10)


def test_checkpoint_is_atomic(tmp_path, monkeypatch):
    from edgekit.federated.strategies.fedbuff import FedBuff, FedBuffConfig

    strategy = FedBuff(FedBuffConfig())
    strategy.buffer = [Update(5, 2, 10, {"w": np.zeros((2, 2), np.float32)}, 1.5, {"a": 1.0})]
    state = ckpt.ServerState("fedbuff", {"w": np.ones((2, 2), np.float32)}, 3, 7, {"curve": []},
                             strategy=strategy.state_dict())
    ckpt.save(tmp_path, state)
    real_savez = np.savez

    def dying_savez(fh, **arrays):
        real_savez(fh, **arrays)
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(np, "savez", dying_savez)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(tmp_path, ckpt.ServerState("fedbuff", {"w": np.full((2, 2), 9, np.float32)}, 4, 8, {"curve": []}))
    monkeypatch.setattr(np, "savez", real_savez)
    back = ckpt.load(tmp_path)
    assert back.version == 3 and back.accepted == 7 and np.all(back.core["w"] == 1)
    again = FedBuff(FedBuffConfig())
    again.load_state_dict(back.strategy, reference={"w": np.ones((2, 2), np.float32)})
    assert again.buffer[0].node_id == 5 and again.buffer[0].metrics == {"a": 1.0}
    np.testing.assert_array_equal(again.buffer[0].state["w"], 0)
    assert [p.name for p in tmp_path.iterdir()] == [ckpt.CKPT_NAME]


def test_server_rejects_wrong_shapes_and_errors_without_crashing(caplog, tmp_path):
    from flwr.app import Message, MetricRecord, RecordDict

    from edgekit.federated.client import train_clone
    from edgekit.federated.server.loop import AsyncServer

    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 64), np.float32), y=np.zeros(0, np.int64))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    grid, prof = _grid(6)
    grid.contexts[prof[4].node_id].node_config["data-path"] = str(tmp_path / "empty.npz")
    grid.contexts[prof[5].node_id].node_config["data-path"] = str(tmp_path / "junk.npz")
    bad_shape, no_examples = prof[0].node_id, prof[1].node_id

    def client(msg, ctx):
        reply = train_clone(msg, ctx)
        if ctx.node_id == bad_shape:
            return _wrong_shape_reply(reply, msg, (3, 3))
        if ctx.node_id == no_examples:
            return Message(RecordDict({"arrays": reply.content["arrays"],
                                       "metrics": MetricRecord({"num-examples": 0, "base-version": 0})}),
                           reply_to=msg)
        return reply

    grid.client_fn = client
    with caplog.at_level(logging.WARNING, logger="edgekit.federated"):
        res = AsyncServer(grid, _cfg(max_versions=3)).run()
    assert res["version"] == 3
    assert any("shape" in r for r in res["rejected"]) and res["errors"] >= 1
    assert "has shape (3, 3)" in caplog.text and "no training examples" in caplog.text
    assert "is empty (0 examples)" in caplog.text and "malformed" in caplog.text
    assert res["errors"] >= 2  # both bad-data nodes answered with an error, the run went on


def test_fedavg_drops_wrong_shape_replies_with_reason(caplog):
    """Flower's FedAvg would crash on a reply of the wrong shape; ours logs and drops it."""
    from edgekit.federated.client import train_clone
    from edgekit.federated.server.loop import AsyncServer

    grid, prof = _grid(4)
    bad = prof[0].node_id

    def client(msg, ctx):
        reply = train_clone(msg, ctx)
        if ctx.node_id == bad:
            return _wrong_shape_reply(reply, msg, (2, 5))
        return reply

    grid.client_fn = client
    with caplog.at_level(logging.WARNING, logger="edgekit.federated"):
        res = AsyncServer(grid, _cfg(method="fedavg", max_versions=3)).run()
    assert res["version"] == 3 and res["final_acc"] > res["curve"][0]["acc"]
    assert f"fedavg: rejected reply from node {bad}" in caplog.text and "has shape (2, 5)" in caplog.text


def _teacher_buffer(fed_digits, n=4, version=0):
    core = get_state(build_model("mlp", 64, 10))
    parts = dirichlet_partition(fed_digits.pool_y, n, 0.5, 0, min_size=8)
    ups = []
    for i, part in enumerate(parts):
        m = set_state(build_model("mlp", 64, 10), core)
        train_local(m, fed_digits.pool_x[part], fed_digits.pool_y[part], epochs=3, lr=0.1, seed=i)
        ups.append(Update(100 + i, version, len(part), get_state(m)))
    return core, ups


def test_distillation_is_kept_only_if_it_beats_the_start_on_validation(fed_digits):
    core, ups = _teacher_buffer(fed_digits)

    def agg(**kw):
        a = cloned(fed_digits, buffer_size=len(ups), guard=1.0, refill=False, **kw)
        for u in ups:
            a.add(u, {0: core})
        return a.aggregate(core, 0)

    start, _ = agg(epochs=0)
    val = lambda st: accuracy(set_state(build_model("mlp", 64, 10), st), fed_digits.val_x, fed_digits.val_y)  # noqa: E731
    # a destructive distillation step (huge lr) is discarded: the start is kept, unchanged
    new, info = agg(epochs=2, lr=50.0)
    assert info.get("distilled-discarded") == 1
    assert all(np.array_equal(new[k], start[k]) for k in start)
    # without the acceptance check the same step is taken and is worse on validation
    bad, _ = agg(epochs=2, lr=50.0, distill_accept=False)
    assert val(bad) < val(start)
    # a sane step is kept only when it helps on validation; it is never worse
    ok, info = agg(epochs=1, lr=0.05)
    assert val(ok) >= val(start) and (info.get("distilled-kept", 0) + info.get("distilled-discarded", 0)) == 1


def test_the_served_ema_survives_a_restart(tmp_path):
    from edgekit.federated.server.loop import AsyncServer

    grid, _ = _grid(4)
    cfg = _cfg(method="fedbuff", ema=0.8, max_versions=3, checkpoint_dir=str(tmp_path))
    srv = AsyncServer(grid, cfg)
    srv.run()
    assert ckpt.load(tmp_path).served is not None
    back = AsyncServer(grid, _cfg(method="fedbuff", ema=0.8, max_versions=4, checkpoint_dir=str(tmp_path)))
    assert back.resumed and back.ema_updates == srv.ema_updates
    for k in srv.core:
        np.testing.assert_array_equal(back.served[k], srv.served[k])
    assert not all(np.array_equal(srv.served[k], srv.core[k]) for k in srv.core)  # EMA != core


def test_resume_from_checkpoint_loses_no_accepted_update(tmp_path):
    from edgekit.federated.server.loop import AsyncServer

    class Crash(Exception):
        pass

    grid, _ = _grid(4)
    cfg = _cfg(buffer_size=3, max_versions=3, checkpoint_dir=str(tmp_path))
    srv = AsyncServer(grid, cfg)
    real = srv.strategy.add

    def add_then_maybe_crash(update, history):
        real(update, history)
        if srv.accepted == 3:  # 4th accepted update: buffered, checkpointed, then the server dies
            srv.accepted += 1
            srv.save()
            raise Crash()

    srv.strategy.add = add_then_maybe_crash
    with pytest.raises(Crash):
        srv.run()
    buffered = [u.node_id for u in srv.strategy.buffer]
    srv2 = AsyncServer(grid, cfg)
    assert srv2.resumed and srv2.version == 1 and srv2.accepted == 4
    assert [u.node_id for u in srv2.strategy.buffer] == buffered and len(buffered) == 1
    np.testing.assert_array_equal(srv2.core["net.0.weight"], srv.core["net.0.weight"])
    res = srv2.run()
    assert res["version"] == 3 and res["accepted"] >= 4 + 2 * 3 - 1 and res["resumed"]


def test_simulation_learns_with_churn_and_is_deterministic():
    from edgekit.federated.sim import simulate

    a = simulate("fedbuff", clients=6, seed=1, horizon=300, buffer_size=3)
    b = simulate("fedbuff", clients=6, seed=1, horizon=300, buffer_size=3)
    assert a["curve"] == b["curve"]
    assert a["final_acc"] > a["curve"][0]["acc"] + 0.3
    c = simulate("cloned", clients=6, seed=1, horizon=300, buffer_size=3, malicious=0.34)
    assert c["final_acc"] > 0.5 and len(c["attacks"]) == 2
    f = simulate("fedavg", clients=6, seed=1, horizon=300)
    assert f["version"] >= 2 and f["bytes"] > 0 and f["final_acc"] > f["curve"][0]["acc"]


def test_cli_simulate_json():
    import json

    from typer.testing import CliRunner

    from edgekit.cli import main as cli

    cli._register_commands()
    r = CliRunner().invoke(cli.app, ["federated", "simulate", "--method", "fedbuff", "--clients", "4",
                                     "--horizon", "120", "--seed", "2", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output[r.output.index("{"):])
    assert res["method"] == "fedbuff" and res["clients"] == 4 and res["curve"]
    bad = CliRunner().invoke(cli.app, ["federated", "simulate", "--malicious", "1.5"])
    assert bad.exit_code != 0


def test_the_app_command_lists_every_setting_with_its_default(tmp_path):
    import tomllib

    from tests.conftest import run_cli

    res = run_cli("federated", "app", tmp_path / "app", "--set", "ema=0.95", timeout=60)
    assert res.returncode == 0, res.stderr
    app = tomllib.loads((tmp_path / "app" / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert app["config"] == {**FedConfig().to_run_config(), "ema": 0.95}
    assert app["components"] == {"serverapp": "edgekit.federated.server.app:app",
                                 "clientapp": "edgekit.federated.client:app"}


def test_transient_grid_errors_do_not_end_the_run(caplog):
    from edgekit.federated.server.loop import AsyncServer

    grid, _ = _grid(4)
    real_pull, calls = grid.pull_messages, {"n": 0}

    def flaky_pull(ids):
        calls["n"] += 1
        if calls["n"] % 4 == 0:
            raise ConnectionError("SuperLink went away for a moment")
        return real_pull(ids)

    grid.pull_messages = flaky_pull
    with caplog.at_level(logging.WARNING, logger="edgekit.federated"):
        res = AsyncServer(grid, _cfg(max_versions=3)).run()
    assert res["version"] == 3 and "SuperLink went away" in caplog.text


def _wrong_shape_reply(reply, msg, shape):
    """The client's reply with every array replaced by zeros of ``shape`` (a malformed update)."""
    from flwr.app import Array, ArrayRecord, Message, RecordDict

    arrays = {k: Array(np.zeros(shape, np.float32)) for k in reply.content["arrays"].keys()}
    return Message(RecordDict({"arrays": ArrayRecord(arrays), "metrics": reply.content["metrics"]}), reply_to=msg)
