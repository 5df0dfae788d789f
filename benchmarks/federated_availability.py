"""Which data existed when the 3x target fell due: a diagnostic for benchmarks/federated.py results.

For every (seed, sigma) of a results file this rebuilds the simulation's own nodes (the same
``make_profiles`` call and Dirichlet partitions as ``simulate``; no training) and reports, at
t3 = t(FedAvg first reaches its own final) / 3 -- the time by which an async method must reach
FedAvg's final to be 3x sooner:

  not_joined_pct   training examples on nodes that join the grid only after t3 (late joiners)
  online_pct       training examples on nodes online at t3
  mean_online_pct  the same, time-averaged over [0, t3]

FedAvg's final is measured with all nodes' data; these numbers say how much of it no method could
have seen by t3. Usage:
  python benchmarks/federated_availability.py [benchmarks/results/federated.json] [--json]
(the summary is enough: no curves are read).
Writes benchmarks/results/federated_availability.json beside a table on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def availability(setup: dict, seed: int, sigma: float, t3: float) -> dict:
    from edgekit.federated import base_sec_per_example, load_dataset, make_profiles, partitions

    n = int(setup["clients"])
    s = load_dataset(setup["dataset"], seed)
    sizes = np.array([len(p) for p in partitions(s.name, seed, n, float(setup["alpha"]))], float)
    profiles = make_profiles(n, seed=seed, horizon=float(setup["horizon"]), speed_sigma=sigma,
                             sec_per_example=base_sec_per_example(len(s.pool_y), n), mean_on=setup.get("mean_on"),
                             mean_off=setup.get("mean_off"))
    total = sizes.sum()
    joined = np.array([p.sessions[0][0] <= t3 for p in profiles])
    grid = np.linspace(0.0, t3, 201)
    online = [sum(sizes[p.partition_id] for p in profiles if p.online(t)) / total for t in grid]
    return {"seed": seed, "sigma": sigma, "t3": round(t3, 1),
            "not_joined_pct": round(100 * sizes[~joined].sum() / total, 1),
            "online_pct": round(100 * online[-1], 1),
            "mean_online_pct": round(100 * float(np.mean(online)), 1),
            "late_joiners": [{"join": round(p.sessions[0][0], 1), "examples": int(sizes[p.partition_id])}
                             for p in profiles if p.sessions[0][0] > 0]}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="?", default=str(ROOT / "benchmarks/results/federated.json"))
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/federated_availability.json"))
    a = ap.parse_args(argv)
    path = Path(a.results)
    if not path.is_file():
        sys.exit(f"error: no results file {path} (run benchmarks/federated.py first)")
    res = json.loads(path.read_text())
    rows = []
    for st in res["settings"]:
        fa = st["summary"].get("fedavg@0")
        if fa is None or not fa.get("t_reach_fedavg_final"):
            continue
        row = availability(res["setup"], st["seed"], st["sigma"], fa["t_reach_fedavg_final"] / 3)
        row["speedup"] = {m: v.get("speedup") for m, v in st["must_show"].items() if "speedup" in v}
        rows.append(row)
    out = {"benchmark": "federated_availability", "source": path.name, "rows": rows}
    Path(a.out).write_text(json.dumps(out, indent=1))
    if a.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"{'seed':>4} {'sigma':>5} {'t3':>6} {'not joined %':>12} {'online at t3 %':>14} "
              f"{'mean online %':>13}  speed-ups")
        for r in rows:
            sp = ", ".join(f"{m} {v if v is not None else 'never'}" for m, v in r["speedup"].items())
            print(f"{r['seed']:>4} {r['sigma']:>5g} {r['t3']:>6g} {r['not_joined_pct']:>12} "
                  f"{r['online_pct']:>14} {r['mean_online_pct']:>13}  {sp}")
    return rows


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
