"""Federated learning with the user's own model: ``--model path/file.py:fn`` or ``pkg.mod:fn``.

Simulations with a user MLP (a hidden size of its own) and a BatchNorm model (integer buffers are
kept from the core, float entries aggregated) under all three methods, one clear line for every
unusable model before anything starts (simulate and server), and a node that cannot import the
model replying with a Flower Error instead of crashing the server."""
from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from tests.conftest import run_cli

pytest.importorskip("flwr")
pytest.importorskip("sklearn")

from tests.conftest import assert_user_error  # noqa: E402
from edgekit.core.errors import UsageError  # noqa: E402
from edgekit.federated.config import FedConfig  # noqa: E402

MODELS = textwrap.dedent("""
    import torch
    from torch import nn

    NOT_A_FUNCTION = 3


    def small_mlp(in_dim, n_classes):
        return nn.Sequential(nn.Linear(in_dim, 40), nn.ReLU(), nn.Linear(40, n_classes))


    class BNNet(nn.Module):
        def __init__(self, in_dim, n_classes):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(in_dim, 32), nn.BatchNorm1d(32), nn.ReLU(),
                                      nn.Linear(32, n_classes))

        def forward(self, x):
            return self.body(x)


    def bn_net(in_dim, n_classes):
        return BNNet(in_dim, n_classes)


    def raises(in_dim, n_classes):
        raise ValueError("no hidden size given")


    def not_a_module(in_dim, n_classes):
        return {"weight": torch.zeros(3)}


    def wrong_shape(in_dim, n_classes):
        return nn.Linear(in_dim, n_classes + 1)


    class NaNNet(nn.Linear):
        def forward(self, x):
            return super().forward(x) * float("nan")


    def nan_out(in_dim, n_classes):
        return NaNNet(in_dim, n_classes)
""")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("usermodel")
    (d / "fed_user_models.py").write_text(MODELS)
    return d


_user_error = assert_user_error


def test_simulate_with_a_user_mlp_from_a_relative_file(models):
    res = run_cli("federated", "simulate", "--model", "fed_user_models.py:small_mlp", "--clients", "5",
                  "--horizon", "400", "--no-churn", "--alpha", "1.0", "--json", cwd=models, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    r = json.loads(res.stdout)
    ref = f"{models / 'fed_user_models.py'}:small_mlp"  # absolute: ServerApp/ClientApps run elsewhere
    assert r["model"] == ref == r["config"]["model"]
    assert r["model_arrays"] == {"0.weight": [40, 64], "0.bias": [40], "2.weight": [10, 40], "2.bias": [10]}
    assert r["version"] > 0 and r["errors"] == 0 and not r["rejected"]
    assert r["final_acc"] > 0.3, r["final_acc"]  # chance is 0.1


@pytest.mark.parametrize("method", ["cloned", "fedavg"])
def test_a_batchnorm_model_trains_and_keeps_its_counter_from_the_core(models, tmp_path, method):
    """Floating-point entries (weights, running statistics) are aggregated; num_batches_tracked is a
    counter that goes through Flower as a 0-d int64 array and stays the core's."""
    from edgekit.federated.server import checkpoint as ckpt
    from edgekit.federated.sim import simulate

    r = simulate(method, clients=4, seed=0, horizon=300, churn=False, alpha=1.0,
                 model=str(models / "fed_user_models.py") + ":bn_net", checkpoint_dir=str(tmp_path / "ck"))
    assert r["errors"] == 0 and not r["rejected"] and r["version"] > 0
    assert r["final_acc"] > 0.3, r["final_acc"]
    assert r["model_arrays"]["body.1.num_batches_tracked"] == [] and r["model_arrays"]["body.0.weight"] == [32, 64]
    core = ckpt.load(str(tmp_path / "ck")).core
    assert core["body.1.num_batches_tracked"].dtype == np.int64 and core["body.1.num_batches_tracked"] == 0
    assert core["body.1.running_var"].dtype == np.float32
    assert not np.allclose(core["body.1.running_mean"], 0.0)  # the running statistics were aggregated


def test_fedbuff_and_a_module_reference_on_the_python_path(models, monkeypatch):
    from edgekit.federated.sim import simulate

    monkeypatch.syspath_prepend(str(models))
    assert FedConfig(model="fed_user_models:bn_net").model == "fed_user_models:bn_net"  # unchanged
    r = simulate("fedbuff", clients=4, seed=0, horizon=300, churn=False, alpha=1.0, model="fed_user_models:bn_net")
    assert r["errors"] == 0 and not r["rejected"] and r["final_acc"] > 0.3, r


@pytest.mark.parametrize("ref, needles", [
    ("absent.py:small_mlp", ["cannot import", "absent.py:small_mlp", "no such file", "path/to/file.py:function"]),
    ("fed_user_models.py:nofn", ["has no attribute 'nofn'"]),
    ("fed_user_models.py:NOT_A_FUNCTION", ["is not callable (it is of type int)"]),
    ("fed_user_models.py:raises", ["raises(64, 10) failed: ValueError: no hidden size given", "fn(in_dim, n_classes)"]),
    ("fed_user_models.py:not_a_module", ["returned dict, not a torch.nn.Module"]),
    ("fed_user_models.py:wrong_shape", ["maps (8, 64) to shape (8, 11), expected (8, 10)"]),
    ("fed_user_models.py:nan_out", ["returns NaN or Inf logits"]),
    ("no_such_pkg_xyz.mod:make", ["No module named 'no_such_pkg_xyz'", "PYTHONPATH"]),
    ("fed_user_models.py", ["unknown model", "package.module:function"]),
])
def test_unusable_models_are_one_clear_line(models, tmp_path, ref, needles):
    _user_error(run_cli("federated", "simulate", "--model", ref, "--horizon", "30", "--out", tmp_path / "r.json",
                        cwd=models, timeout=60), *needles)
    assert not (tmp_path / "r.json").exists()


def test_server_refuses_a_bad_model_before_starting_anything(models, tmp_path):
    out = tmp_path / "result.json"
    out.write_text("{}")
    _user_error(run_cli("federated", "server", "--insecure", "--timeout", "5", "--out", out, "--checkpoint-dir",
                        tmp_path / "ck", "--model", models / "fed_user_models.py:wrong_shape", timeout=60),
                "expected (8, 10)")
    assert out.read_text() == "{}" and not (tmp_path / "ck").exists()


def test_a_node_that_cannot_import_the_model_replies_with_an_error(models, caplog):
    """Through the virtual grid: the server's model is fine, a node's import fails (the file is not
    there); its Flower Error reply is counted and logged, the run ends normally."""
    import logging

    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from edgekit.federated.client import ERR_CONFIG, train_clone
    from edgekit.federated.models import build_model, get_state
    from edgekit.federated.state import state_to_record
    from edgekit.federated.server.loop import AsyncServer
    from edgekit.federated.sim.grid import VirtualGrid
    from edgekit.federated.sim.nodes import make_profiles

    ref = str(models / "fed_user_models.py") + ":small_mlp"
    grid = VirtualGrid(make_profiles(3, seed=0, horizon=300, churn=False, sec_per_example=0.02))
    cfg = FedConfig(model=ref, max_versions=2, buffer_size=2, deadline=60.0, poll=1.0, max_time=200.0,
                    num_partitions=3)

    def node_without_the_file(msg, context):
        msg.content.config_records["config"]["model"] = "/nonexistent/fed_user_models.py:small_mlp"
        return train_clone(msg, context)

    grid.client_fn = node_without_the_file
    with caplog.at_level(logging.WARNING, logger="edgekit.federated"):
        res = AsyncServer(grid, cfg).run()
    assert res["errors"] > 0 and res["accepted"] == 0 and res["model"] == ref
    assert "cannot import '/nonexistent/fed_user_models.py:small_mlp'" in caplog.text

    msg = Message(RecordDict({"arrays": state_to_record(get_state(build_model(ref, 64, 10))),
                              "config": ConfigRecord({**cfg.client_config(0), "model": "no_such_pkg_xyz:make"})}),
                  7, "train")
    node = {"partition-id": 0, "num-partitions": 3}
    reply = train_clone(msg, Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={}))
    assert reply.has_error() and reply.error.code == ERR_CONFIG
    assert "cannot import 'no_such_pkg_xyz:make'" in reply.error.reason


def test_config_forms_and_one_import_implementation(models, monkeypatch):
    monkeypatch.chdir(models)
    assert FedConfig(model="fed_user_models.py:small_mlp").model == f"{models / 'fed_user_models.py'}:small_mlp"
    rc = FedConfig(model="fed_user_models.py:small_mlp").to_run_config()
    assert FedConfig.from_run_config(rc).model == rc["model"]
    for bad in ("rnn", "fed_user_models.py", "a b:c"):
        with pytest.raises(UsageError, match="unknown model"):
            FedConfig(model=bad)
    import edgekit.models.resolve as resolve
    from edgekit.core import userimport

    assert resolve.load_callable is userimport.load_callable and not hasattr(resolve, "_import")
