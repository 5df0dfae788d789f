"""Benchmark: asynchronous cloned/buffered distillation vs FedBuff-style async vs Flower FedAvg.

Virtual-clock simulation (edgekit.federated.simulate): N clients with Dirichlet(alpha) non-IID
partitions, log-normal speeds and bandwidths, exponential on/off churn, late joiners; the same
seed gives every method the same clients, speeds and churn. Each method runs with 0 % and 20 %
malicious clients (label flip, random weights, scaled updates in turn).

Writes benchmarks/results/federated.json and federated.png (accuracy vs virtual time and vs
bytes sent). "final" = mean test accuracy over the last 10 % of the horizon (the last point is
reported too). Usage:  python benchmarks/federated.py [--dataset fashion-mnist] [--quick]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"


def smoothed_final(curve: list[dict], horizon: float, frac: float = 0.1) -> float:
    """Time-weighted mean accuracy over [horizon*(1-frac), horizon] (the curve is a step function)."""
    t0 = horizon * (1 - frac)
    acc_at = [p for p in curve if p["t"] <= t0]
    cur = acc_at[-1]["acc"] if acc_at else curve[0]["acc"]
    total, last_t = 0.0, t0
    for p in curve:
        if p["t"] <= t0:
            continue
        if p["t"] > horizon:
            break
        total += cur * (p["t"] - last_t)
        cur, last_t = p["acc"], p["t"]
    total += cur * (horizon - last_t)
    return total / (horizon - t0)


def first_reach(curve: list[dict], target: float, key: str = "t") -> float | None:
    return next((p[key] for p in curve if p["acc"] >= target), None)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--horizon", type=float, default=3000.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--malicious", type=float, default=0.2)
    ap.add_argument("--methods", default="cloned,fedbuff,fedavg")
    ap.add_argument("--quick", action="store_true", help="digits, 12 clients, short horizon")
    ap.add_argument("--out", default=str(OUT / "federated.json"))
    a = ap.parse_args(argv)
    if a.quick:
        a.dataset, a.clients, a.horizon = "digits", 12, 600.0

    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.ERROR)
    import flwr

    from edgekit.federated.data import resolve_dataset
    from edgekit.federated.simulate import simulate

    dataset = resolve_dataset(a.dataset)
    common = dict(clients=a.clients, seed=a.seed, dataset=dataset, horizon=a.horizon, alpha=a.alpha)
    # FedAvg's round deadline decides how long it waits for stragglers: give it its best one
    sweep = {}
    if "fedavg" in a.methods:
        for d in (a.horizon / 100, a.horizon / 50, a.horizon / 25):
            r = simulate("fedavg", deadline=d, **common)
            sweep[round(d, 1)] = round(smoothed_final(r["curve"], a.horizon), 4)
            print(f"fedavg deadline {d:.0f}: smoothed final {sweep[round(d, 1)]:.4f}", flush=True)
    best_deadline = max(sweep, key=sweep.get) if sweep else None
    runs = {}
    for method in a.methods.split(","):
        for mal in (0.0, a.malicious):
            t = time.time()
            extra = {"deadline": best_deadline} if method == "fedavg" else {}
            r = simulate(method, malicious=mal, **common, **extra)
            r["final_smoothed"] = round(smoothed_final(r["curve"], a.horizon), 4)
            r["wall_s"] = round(time.time() - t, 1)
            runs[f"{method}@{mal:g}"] = r
            print(f"{method:8s} malicious={mal:.2f} final={r['final_acc']:.4f} "
                  f"smoothed={r['final_smoothed']:.4f} accepted={r['accepted']} "
                  f"MB={r['bytes'] / 1e6:.1f} wall={r['wall_s']}s", flush=True)

    summary = {}
    fa = runs.get("fedavg@0")
    for key, r in runs.items():
        s = {"final_last": r["final_acc"], "final_smoothed": r["final_smoothed"],
             "accepted": r["accepted"], "versions": r["version"], "MB": round(r["bytes"] / 1e6, 2),
             "timeouts": r["timeouts"], "lost_replies": r["lost_replies"], "rejected": r["rejected"],
             "wall_s": r["wall_s"]}
        if fa is not None:
            target = fa["final_smoothed"]
            s["t_reach_fedavg_final"] = first_reach(r["curve"], target)
            s["MB_reach_fedavg_final"] = (lambda b: None if b is None else round(b / 1e6, 2))(
                first_reach(r["curve"], target, "bytes"))
        summary[key] = s
    must = {}
    if fa is not None:
        t_fa = summary["fedavg@0"]["t_reach_fedavg_final"]
        for m in ("cloned", "fedbuff"):
            if f"{m}@0" not in runs:
                continue
            t_m = summary[f"{m}@0"]["t_reach_fedavg_final"]
            speed = (t_fa / t_m) if (t_fa and t_m) else None
            gap = (runs[f"{m}@0"]["final_smoothed"] - fa["final_smoothed"]) * 100
            drop = (runs[f"{m}@0"]["final_smoothed"] - runs[f"{m}@{a.malicious:g}"]["final_smoothed"]) * 100
            must[m] = {"speedup_to_fedavg_final": None if speed is None else round(speed, 2),
                       "final_minus_fedavg_points": round(gap, 2),
                       "malicious_drop_points": round(drop, 2),
                       "speedup_ok(>=3x)": bool(speed and speed >= 3.0),
                       "final_ok(within 1 pt)": gap >= -1.0, "robust_ok(drop<=2)": drop <= 2.0}
        must["fedavg_malicious_drop_points"] = round(
            (fa["final_smoothed"] - runs[f"fedavg@{a.malicious:g}"]["final_smoothed"]) * 100, 2)
    result = {
        "benchmark": "federated", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0],
                    "cpus": os.cpu_count(), "torch": torch.__version__, "flwr": flwr.__version__},
        "setup": {"dataset": dataset, "requested_dataset": a.dataset, "clients": a.clients,
                  "alpha": a.alpha, "horizon": a.horizon, "seed": a.seed, "malicious": a.malicious,
                  "time_unit": "a median-speed client needs 10 units per local epoch",
                  "final": "mean test accuracy over the last 10% of the horizon",
                  "fedavg_deadline_sweep": sweep, "fedavg_deadline": best_deadline,
                  "async_deadline": a.horizon / 20},
        "summary": summary, "must_show": must,
        "curves": {k: r["curve"] for k, r in runs.items()},
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)
    plot(result, out.with_suffix(".png"))
    print(json.dumps({"summary": summary, "must_show": must}, indent=1))
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {"cloned": "tab:blue", "fedbuff": "tab:orange", "fedavg": "tab:green"}
    for key, curve in result["curves"].items():
        method, mal = key.split("@")
        style = "-" if float(mal) == 0 else "--"
        label = f"{method} ({float(mal) * 100:.0f}% malicious)"
        ax1.step([p["t"] for p in curve], [p["acc"] for p in curve], style, where="post",
                 color=colors.get(method), label=label, lw=1.2)
        ax2.step([p["bytes"] / 1e6 for p in curve], [p["acc"] for p in curve], style, where="post",
                 color=colors.get(method), label=label, lw=1.2)
    s = result["setup"]
    ax1.set(xlabel="virtual time", ylabel="test accuracy",
            title=f"{s['dataset']}, {s['clients']} clients, Dir({s['alpha']}), churn")
    ax2.set(xlabel="MB sent (down + up)", ylabel="test accuracy", title="accuracy vs communication")
    ax2.set_xscale("log")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1)
    ax1.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
