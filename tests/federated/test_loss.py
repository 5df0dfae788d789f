"""The clients' logit-adjusted loss (``logit-adjust``): CE(z + tau * log prior, y) with the node's
own label prior. Digits only; a few seconds."""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("flwr")
torch.set_num_threads(1)

from edgekit.core.errors import UsageError  # noqa: E402
from edgekit.federated.config import FedConfig, parse_sets, settings_table  # noqa: E402
from edgekit.federated.models import build_model, get_state, train_local  # noqa: E402


def _skewed(d, rng):
    """A label-skewed node: classes 0-4 only, class 0 ten times as frequent as each of 1-4."""
    idx = [rng.choice(np.flatnonzero(d.pool_y == c), n, replace=False) for c, n in ((0, 90), (1, 9), (2, 9), (3, 9), (4, 9))]
    idx = np.concatenate(idx)
    return d.pool_x[idx], d.pool_y[idx]


def _trained(d, x, y, tau):
    torch.manual_seed(0)
    m = build_model("mlp", d.in_dim, d.n_classes)
    train_local(m, x, y, epochs=3, lr=0.05, seed=1, logit_adjust=tau)
    with torch.no_grad():
        return m(torch.from_numpy(d.test_x.astype(np.float32))).numpy()


def test_zero_adjustment_is_plain_cross_entropy(fed_digits):
    x, y = fed_digits.pool_x[:200], fed_digits.pool_y[:200]
    states = []
    for kw in ({}, {"logit_adjust": 0.0}):
        torch.manual_seed(0)
        m = build_model("mlp", fed_digits.in_dim, fed_digits.n_classes)
        train_local(m, x, y, epochs=1, seed=3, **kw)
        states.append(get_state(m))
    assert all(np.array_equal(states[0][k], states[1][k]) for k in states[0])


def test_adjustment_counters_a_nodes_label_skew(fed_digits):
    d = fed_digits
    x, y = _skewed(d, np.random.default_rng(0))
    plain, adjusted = _trained(d, x, y, 0.0), _trained(d, x, y, 1.0)
    seen = np.isin(d.test_y, [1, 2, 3, 4])
    # plain CE learns the node's prior: the frequent class absorbs examples of the rarer ones
    share0 = [float((z[seen].argmax(1) == 0).mean()) for z in (plain, adjusted)]
    assert share0[1] < share0[0] - 0.05, share0
    # and it teaches the model to suppress the classes the node never saw; the adjusted loss
    # pushes them down less (their logits relative to the seen classes stay higher)
    gap = [float((z[:, 5:].mean(1) - z[:, :5].mean(1)).mean()) for z in (plain, adjusted)]
    assert gap[1] > gap[0] + 0.5, gap
    # balanced accuracy over the node's classes goes up
    bal = [np.mean([(z[d.test_y == c].argmax(1) == c).mean() for c in range(5)]) for z in (plain, adjusted)]
    assert bal[1] > bal[0], bal


def test_setting_travels_to_the_clients_and_is_checked():
    assert FedConfig(logit_adjust=1.0).client_config(3)["logit-adjust"] == 1.0
    assert FedConfig().client_config(0)["logit-adjust"] == FedConfig().logit_adjust
    assert parse_sets(["logit-adjust=0.5"]) == {"logit_adjust": 0.5}
    assert any(r["key"] == "logit-adjust" and "label" in r["help"] for r in settings_table())
    with pytest.raises(UsageError, match="logit-adjust must be >= 0"):
        FedConfig(logit_adjust=-1.0)
    with pytest.raises(UsageError, match="logit-adjust must be >= 0"):
        FedConfig(logit_adjust=float("nan"))


def test_client_app_uses_the_setting(fed_digits):
    """Through the ClientApp: the same clone trained with and without the adjustment differs, and
    an instruction without the key (an older server) trains plain CE."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from edgekit.federated.client import train_clone
    from edgekit.federated.state import record_to_state, state_to_record
    from edgekit.federated.sim.grid import VirtualGrid  # sets a local task identity

    VirtualGrid([])
    torch.manual_seed(0)
    base = get_state(build_model("mlp", fed_digits.in_dim, fed_digits.n_classes))
    out = {}
    for name, extra in (("none", {}), ("zero", {"logit-adjust": 0.0}), ("one", {"logit-adjust": 1.0})):
        cfg = {**FedConfig().client_config(0), "epochs": 1, **extra}
        if not extra:
            cfg.pop("logit-adjust")
        msg = Message(RecordDict({"arrays": state_to_record(base), "config": ConfigRecord(cfg)}), 1, "train")
        ctx = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 4},
                      state=RecordDict(), run_config={})
        reply = train_clone(msg, ctx)
        assert not reply.has_error()
        out[name] = record_to_state(reply.content.array_records["arrays"])
    assert all(np.array_equal(out["none"][k], out["zero"][k]) for k in base)
    assert any(not np.array_equal(out["one"][k], out["zero"][k]) for k in base)
