"""The federated benchmark scripts, run as a user runs them (never imported): the data-availability
diagnostic on a small results summary, the tuning script's argument checks, and the committed
results' format (no training here)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("flwr")

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


def _run(script: str, *args, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / script), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, stdin=subprocess.DEVNULL)


def test_availability_diagnostic_counts_late_joiners(tmp_path):
    """The share of data on nodes not yet joined at t3 = (FedAvg's reach time) / 3 falls as t3 grows,
    from the late joiners' share to 0 once every node has joined (seed 4 has three late joiners)."""
    setup = {"dataset": "digits", "clients": 12, "alpha": 0.5, "horizon": 600.0}
    settings = [{"seed": 4, "sigma": 1.0, "must_show": {"cloned": {"speedup": 2.0}},
                 "summary": {"fedavg@0": {"t_reach_fedavg_final": 3 * t3}}} for t3 in (0.0, 50.0, 150.0, 1e9)]
    settings[0]["summary"]["fedavg@0"]["t_reach_fedavg_final"] = 1e-9  # t3 ~ 0
    (tmp_path / "r.json").write_text(json.dumps({"setup": setup, "settings": settings}))
    res = _run("federated_availability.py", tmp_path / "r.json", "--out", tmp_path / "a.json", "--json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert len(rows) == 4 and len(rows[0]["late_joiners"]) == 3
    nj = [r["not_joined_pct"] for r in rows]
    assert nj[0] > 0 and nj[-1] == 0 and all(a >= b for a, b in zip(nj, nj[1:]))
    assert all(0 <= r["online_pct"] <= 100 and 0 <= r["mean_online_pct"] <= 100 for r in rows)
    assert json.loads((tmp_path / "a.json").read_text())["rows"][0]["speedup"] == {"cloned": 2.0}
    missing = _run("federated_availability.py", tmp_path / "missing.json", "--out", tmp_path / "b.json")
    assert missing.returncode != 0 and "no results file" in missing.stderr


def test_tune_checks_its_arguments_before_any_run(tmp_path):
    records = tmp_path / "runs.jsonl"
    for args, says in ((["--candidate", "x:distill-lr=-1"], "candidate x: distill-lr must be > 0"),
                       (["--candidate", "x:bogus=1"], "--candidate x:bogus: no such setting"),
                       (["--candidate", "x:teacher-window=20"], "--candidate x:teacher-window: no such setting"),
                       (["--candidate", "distill-lr=0.05"], "NAME:key=value"),
                       (["--seeds", "0,3"], "report seeds")):
        res = _run("federated_tune.py", *args, "--records", records, timeout=60)
        assert res.returncode != 0 and says in res.stderr, (args, res.stderr)
    assert not records.exists()


def test_the_committed_summaries_name_their_runs_files():
    """Each committed summary names its runs file (gzip, beside it), which holds every curve."""
    import gzip

    for name in ("federated", "federated_sigma", "federated_churn50"):
        summary = json.loads((BENCH / "results" / f"{name}.json").read_text())
        with gzip.open(BENCH / "results" / summary["runs_file"], "rt") as fh:
            full = json.load(fh)
        assert [st["seed"] for st in full["settings"]] == [st["seed"] for st in summary["settings"]]
        assert all(st["curves"] and "curves" not in sm for st, sm in zip(full["settings"], summary["settings"]))


def test_the_regression_check_compares_point_by_point(tmp_path):
    curve = [{"t": 0.0, "version": 0, "acc": 0.1, "val": 0.1, "accepted": 0, "bytes": 0, "used": 0}]
    run = {"version": 1, "accepted": 2, "rejected": {}, "final_acc": 0.5, "bytes": 10, "timeouts": 0,
           "lost_replies": 0, "agg_stats": {"dropped": 0}, "curve": curve}
    (tmp_path / "a.json").write_text(json.dumps({"cloned/seed0": run}))
    (tmp_path / "b.json").write_text(json.dumps({"cloned/seed0": {**run, "agg_stats": {}}}))
    same = _run("federated_regress.py", "compare", tmp_path / "a.json", tmp_path / "b.json")
    assert same.returncode == 0 and "1 runs compared, 0 differ" in same.stdout, same.stdout + same.stderr
    moved = {**run, "curve": curve + [{**curve[0], "t": 5.0, "acc": 0.2}]}
    (tmp_path / "c.json").write_text(json.dumps({"cloned/seed0": moved}))
    diff = _run("federated_regress.py", "compare", tmp_path / "a.json", tmp_path / "c.json")
    assert diff.returncode == 1 and "curves differ from point 1" in diff.stdout
