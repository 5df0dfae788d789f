"""Same seeds, same curves: record short federated simulations, and compare two records point by point.

For a change that must not move any result (a refactoring, a check that honest runs never trip):
record with the code before, record with the code after, compare. 30 short digits runs: seeds 0-2
at the benchmark's settings (20 clients, Dirichlet 0.5, sigma 1, churn; the async methods'
ASYNC_SETTINGS, a FedAvg variant of its sweep) and seeds 3-4 at the library defaults (12 clients),
each of cloned / fedbuff / fedavg, clean and with 20 % attackers; about 6 minutes on 2 cores.

  python benchmarks/federated_regress.py record before.json [--horizon 400] [--only cloned/seed0]
  python benchmarks/federated_regress.py compare before.json after.json     # exit 1 if any differs

Compared per run: every curve point (time, version, test and validation accuracy, accepted,
bytes), the final accuracy, version, accepted and rejected counts, timeouts, lost replies and the
aggregation counters (a counter that is 0 in one and absent in the other counts as equal).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from federated import ASYNC_SETTINGS  # noqa: E402

FIELDS = ("version", "accepted", "rejected", "final_acc", "bytes", "timeouts", "lost_replies")


def jobs(horizon: float) -> list[tuple[str, dict]]:
    fedavg = {"deadline": horizon / 50, "fedavg_ema": 0.5, "epochs": 1, "ema_warmup": False, "logit_adjust": 1.0}
    fedavg_defaults = {"deadline": horizon / 25, "epochs": 2, "ema_warmup": False, "logit_adjust": 0.0}
    common = {"dataset": "digits", "horizon": horizon, "alpha": 0.5, "speed_sigma": 1.0}
    out = []
    for seed, clients, extra in ((0, 20, None), (1, 20, None), (2, 20, None), (3, 12, {}), (4, 12, {})):
        for mal in (0.0, 0.2):
            for method in ("cloned", "fedbuff", "fedavg"):
                kw = (fedavg if extra is None else fedavg_defaults) if method == "fedavg" else \
                    (ASYNC_SETTINGS if extra is None else {})
                name = f"{method}/seed{seed}/mal{mal:g}/{'bench' if extra is None else 'defaults'}"
                out.append((name, {"method": method, "seed": seed, "clients": clients, "malicious": mal,
                                   **common, **kw}))
    return out


def record(path: Path, horizon: float, only: str | None) -> None:
    from edgekit.federated import simulate

    logging.basicConfig(level=logging.ERROR)
    runs = {}
    for name, kw in jobs(horizon):
        if only and only not in name:
            continue
        t = time.time()
        kw = dict(kw)
        r = simulate(kw.pop("method"), **kw)
        runs[name] = {**{f: r[f] for f in FIELDS}, "agg_stats": r.get("agg_stats", {}), "curve": r["curve"]}
        print(f"{name}: version {r['version']}, final {r['final_acc']} ({time.time() - t:.1f}s)", file=sys.stderr)
    path.write_text(json.dumps(runs))


def compare(a: dict, b: dict) -> int:
    differ = 0
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            print(f"only in {'the first' if name in a else 'the second'}: {name}")
            differ += 1
            continue
        x, y = a[name], b[name]
        why = [f"{f}: {x[f]} vs {y[f]}" for f in FIELDS if x[f] != y[f]]
        if x["curve"] != y["curve"]:
            i = next((i for i, (p, q) in enumerate(zip(x["curve"], y["curve"])) if p != q),
                     min(len(x["curve"]), len(y["curve"])))
            why.append(f"curves differ from point {i}")
        sx, sy = ({k: v for k, v in s.items() if v} for s in (x["agg_stats"], y["agg_stats"]))
        if sx != sy:
            why.append(f"agg_stats {sx} vs {sy}")
        differ += bool(why)
        print(("DIFFERS " if why else "same    ") + name + ("  " + "; ".join(why) if why else ""))
    print(f"{len(set(a) & set(b))} runs compared, {differ} differ")
    return 1 if differ else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="run the simulations, write their curves")
    r.add_argument("out", type=Path)
    r.add_argument("--horizon", type=float, default=400.0)
    r.add_argument("--only", help="only the runs whose name contains this, e.g. cloned/seed0")
    c = sub.add_parser("compare", help="compare two records")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "record":
        record(a.out, a.horizon, a.only)
        return 0
    return compare(json.loads(a.a.read_text()), json.loads(a.b.read_text()))


if __name__ == "__main__":
    sys.exit(main())
