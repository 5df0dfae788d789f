"""Print the markdown tables for docs/ppp.md from benchmarks/results/ppp_{fashion,kws}.json."""
from __future__ import annotations

import json
import sys
from pathlib import Path

R = Path(__file__).resolve().parent / "results"


def table(s: dict, unpruned_flops: int) -> str:
    rows = ["| keep ratio | MFLOPs (MACs) | FLOPs ↓ | params | PPP acc | Δ vs unpruned (mean / worst) | users within 1 pt | "
            "L1 acc | random acc | PPP − L1 | personalize s (mean / max) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            f"| unpruned (gated) | {unpruned_flops / 1e6:.2f} | 1.00× | | {s['unpruned_mean_acc'] * 100:.1f} | | | | | | |"]
    for k, v in sorted(s["per_ratio"].items(), key=lambda kv: float(kv[0])):
        p = v["ppp"]
        rows.append(f"| {k} | {v['flops'] / 1e6:.2f} | {v['flops_reduction']:.2f}× | {v['params']} | {p['mean_acc'] * 100:.1f} | "
                    f"{p['mean_delta_pts']:+.1f} / {p['min_delta_pts']:+.1f} | {p['users_within_1pt']}/{s['users']} | "
                    f"{v['l1']['mean_acc'] * 100:.1f} | {v['random']['mean_acc'] * 100:.1f} | {v['ppp_minus_l1_pts']:+.1f} | "
                    f"{v['ppp_seconds_mean']:.3f} / {v['ppp_seconds_max']:.3f} |")
    return "\n".join(rows)


def onnx_table(o: dict) -> str:
    lat = o["latency_ms"]
    keys = list(lat["batch1"])
    rows = ["| graph | MFLOPs | init. bytes | ORT ms b=1 (median / min) | ORT ms b=32 (median / min) | speed-up b=1 / b=32 (median, vs static) |",
            "|---|---|---|---|---|---|"]
    base1, base32 = lat["batch1"]["static (unpruned, all channels)"], lat["batch32"]["static (unpruned, all channels)"]
    for k in keys:
        if k.startswith("ppp@"):
            r = o["per_ratio"][k[4:]]
            fl, by = r["flops_after"], r["initializer_bytes_after"]
        elif k.startswith("static"):
            fl, by = o["unpruned_static"]["flops"], o["unpruned_static"]["initializer_bytes"]
        else:
            fl, by = None, None
        rows.append(f"| {k} | {'' if fl is None else f'{fl / 1e6:.2f}'} | {'' if by is None else by} | "
                    f"{lat['batch1'][k]:.3f} / {lat.get('batch1_min', lat['batch1'])[k]:.3f} | "
                    f"{lat['batch32'][k]:.2f} / {lat.get('batch32_min', lat['batch32'])[k]:.2f} | "
                    f"{base1 / lat['batch1'][k]:.2f}× / {base32 / lat['batch32'][k]:.2f}× |")
    return "\n".join(rows)


def main():
    for name in sys.argv[1:] or ["ppp_fashion", "ppp_kws"]:
        r = json.loads((R / f"{name}.json").read_text())
        print(f"#### {name}  ({r['env']['date']}, torch {r['env']['torch']}, ORT {r['env']['onnxruntime']}, seed {r['env']['seed']})\n")
        sums = r["summary"] if "per_ratio" in r["summary"] else r["summary"]
        if "per_ratio" in sums:
            print(table(sums, sums["unpruned_flops"]) + "\n")
        else:
            for kind, s in sums.items():
                print(f"users = {kind}\n\n" + table(s, s["unpruned_flops"]) + "\n")
        print(onnx_table(r["onnx"]) + "\n")


if __name__ == "__main__":
    main()
