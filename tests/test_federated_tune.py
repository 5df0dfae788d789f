"""benchmarks/federated_tune.py: the tuning rule in code (validation only), candidate parsing, and
the report from a record file (an interrupted tuning resumes from its records; no simulation here)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("flwr")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tune():
    spec = importlib.util.spec_from_file_location("federated_tune", ROOT / "benchmarks" / "federated_tune.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_candidate_parsing(tune):
    from edgekit.core.errors import UsageError

    name, kw = tune.parse_candidate("dw:distill-lr=0.05,teacher-window=20")
    assert name == "dw" and kw == {"distill_lr": 0.05, "teacher_window": 20}
    for bad, says in (("distill-lr=0.05", "NAME:key=value"), ("committed:ema=0.9", "committed"),
                      ("x:distil-lr=0.05", "did you mean distill-lr")):
        with pytest.raises(UsageError, match=says):
            tune.parse_candidate(bad)
    # a bad key or value names --candidate, the option the user typed (not the CLI's --set)
    for bad, says in (("x:bogus=1", "--candidate x:bogus: no such setting"),
                      ("x:ema=abc", "--candidate x:ema=abc: a number expected"),
                      ("x:ema=0.9,ema=0.8", "--candidate x:ema is given twice")):
        with pytest.raises(UsageError, match=says) as err:
            tune.parse_candidate(bad)
        assert "--set" not in str(err.value)


def test_bad_candidate_value_stops_before_any_run(tune, tmp_path):
    records = tmp_path / "runs.jsonl"
    with pytest.raises(SystemExit, match="candidate x: distill-lr must be > 0"):
        tune.main(["--candidate", "x:distill-lr=-1", "--records", str(records)])
    assert not records.exists()


def test_rule(tune):
    rows = {"committed": {"min": 1.89, "mean_gap": 0.9, "max_drop": 1.8},
            "a": {"min": 2.5, "mean_gap": 0.1, "max_drop": 2.4},     # fastest, but fails robustness
            "b": {"min": 1.95, "mean_gap": 1.2, "max_drop": 1.0}}    # within 0.1x: larger gap wins
    best, why = tune.decide(rows)
    assert best == "b" and "a" in why and "larger mean gap" in why
    rows["b"]["min"] = 1.5
    assert tune.decide(rows)[0] == "committed"
    assert tune.decide({"a": rows["a"]})[0] is None


def test_window_mean(tune):
    curve = [{"t": 0.0, "val": 0.1}, {"t": 50.0, "val": 0.5}, {"t": 150.0, "val": 0.9}]
    assert tune.window_mean(curve, 0, 100) == pytest.approx(0.3)      # 0.1 for 50, 0.5 for 50
    assert tune.window_mean(curve, 100, 300) == pytest.approx(0.8)    # 0.5 for 50, 0.9 for 150


def test_report_from_records_and_report_seeds_refused(tune, tmp_path, capsys):
    """Every run already recorded: nothing is simulated, and the speed-ups follow from the curves."""
    from edgekit.federated.data import resolve_dataset
    from edgekit.federated.simulate import churn_means

    H = 200.0
    on, off = churn_means(H, None, None)
    setup = {"clients": 6, "dataset": resolve_dataset("digits"), "horizon": H, "alpha": 0.5,
             "speed_sigma": 1.0, "mean_on": on, "mean_off": off}
    step = lambda t, v: [{"t": 0.0, "val": 0.1}, {"t": t, "val": v}]  # noqa: E731
    recs = []
    for k, kw in tune.fedavg_variants(H).items():  # one variant ends at 0.8, reached at t = 120
        recs.append({"method": "fedavg", "seed": 0, "mal": 0.0, "setup": setup, "kw": kw, "name": k,
                     "curve": step(120.0, 0.8) if k == "deadline=4,ema=0.5,epochs=1" else step(10.0, 0.7)})
    cand = {**tune.ASYNC_SETTINGS, "distill_lr": 0.05}
    for name, kw, t, v, vm in (("committed", dict(tune.ASYNC_SETTINGS), 40.0, 0.85, 0.84),
                               ("dw", cand, 60.0, 0.9, 0.86)):
        recs.append({"method": "cloned", "seed": 0, "mal": 0.0, "setup": setup, "kw": kw, "name": name,
                     "curve": step(t, v)})
        recs.append({"method": "cloned", "seed": 0, "mal": 0.2, "setup": setup, "kw": kw, "name": name,
                     "curve": step(t, vm)})
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"method": "cloned", "se')  # cut off
    rep = tune.main(["--candidate", "dw:distill-lr=0.05", "--seeds", "0", "--dataset", "digits", "--clients", "6",
                     "--horizon", str(H), "--records", str(path), "--json"])
    err = capsys.readouterr().err
    assert "running 0" in err and "skipping a cut-off record" in err
    assert path.read_text().endswith("\n")
    assert rep["fedavg_reference"][0] == {"choice": "deadline=4,ema=0.5,epochs=1", "val_final": 0.8, "t_reach": 120.0}
    c, d = rep["settings"]["committed"], rep["settings"]["dw"]
    assert c["per_seed"][0]["speedup"] == 3.0 and d["per_seed"][0]["speedup"] == 2.0
    assert c["per_seed"][0]["gap"] == pytest.approx(5.0) and c["max_drop"] == pytest.approx(1.0)
    assert d["max_drop"] == pytest.approx(4.0)
    assert rep["chosen"] == "committed"
    # a --clean-only screen needs no malicious run, and decides nothing
    clean = tmp_path / "clean.jsonl"
    clean.write_text("".join(json.dumps(r) + "\n" for r in recs if r["mal"] == 0.0))
    scr = tune.main(["--candidate", "dw:distill-lr=0.05", "--seeds", "0", "--dataset", "digits", "--clients", "6",
                     "--horizon", str(H), "--records", str(clean), "--clean-only"])
    out = capsys.readouterr()
    assert "running 0" in out.err and "no decision" in out.out
    assert scr["chosen"] is None and scr["settings"]["dw"]["max_drop"] is None
    assert scr["settings"]["dw"]["per_seed"][0]["speedup"] == 2.0
    with pytest.raises(SystemExit, match="report seeds"):
        tune.main(["--seeds", "0,3", "--records", str(path)])
