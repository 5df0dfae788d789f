"""benchmarks/federated_availability.py: the data-availability diagnostic of the federated benchmark
(no training; digits)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("flwr")


def test_availability_diagnostic_counts_late_joiners(tmp_path):
    """benchmarks/federated_availability.py: the share of data on nodes not yet joined falls from
    the late joiners' share at t=0 to 0 once every node has joined, and never rises."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "federated_availability.py"
    spec = importlib.util.spec_from_file_location("federated_availability", path)
    fa = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fa)
    setup = {"dataset": "digits", "clients": 12, "alpha": 0.5, "horizon": 600.0}
    rows = [fa.availability(setup, 4, 1.0, t) for t in (0.0, 50.0, 150.0, 300.0, 1e9)]
    late = rows[0]["late_joiners"]
    assert len(late) == 3, "seed 4 has three late joiners"
    nj = [r["not_joined_pct"] for r in rows]
    assert nj[0] > 0 and nj[-1] == 0 and all(a >= b for a, b in zip(nj, nj[1:]))
    assert all(0 <= r["online_pct"] <= 100 and 0 <= r["mean_online_pct"] <= 100 for r in rows)
    # the CLI reads a benchmark result and writes its rows
    res = {"setup": setup, "settings": [{"seed": 4, "sigma": 1.0, "must_show": {"cloned": {"speedup": 2.0}},
                                         "summary": {"fedavg@0": {"t_reach_fedavg_final": 450.0}}}]}
    (tmp_path / "r.json").write_text(json.dumps(res))
    out = fa.main([str(tmp_path / "r.json"), "--out", str(tmp_path / "a.json")])
    assert out[0]["t3"] == 150.0 and out[0]["not_joined_pct"] == rows[2]["not_joined_pct"]
    assert json.loads((tmp_path / "a.json").read_text())["rows"][0]["speedup"] == {"cloned": 2.0}
    with pytest.raises(SystemExit):
        fa.main([str(tmp_path / "missing.json"), "--out", str(tmp_path / "b.json")])
