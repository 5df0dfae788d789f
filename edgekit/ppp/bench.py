"""Shared benchmark machinery for benchmarks/ppp_fashion.py and benchmarks/ppp_kws.py.

Per user: accuracy on the user's held-out data of (a) the unpruned gated model, (b) PPP at several
keep ratios, (c) L1-magnitude channel pruning and (d) random channel pruning at exactly the same
per-layer channel counts (hence the same FLOPs), none retrained; personalization time. Side by side
in one run: FLOPs, params, ONNX initializer bytes and ORT latency of the unpruned and pruned graphs
(the pruned graphs made by the torch-free path from the exported gated bundle).
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgekit.ppp import personalize as ppp
from edgekit.ppp.train import evaluate

RATIOS = [0.25, 0.35, 0.4, 0.45, 0.6]


def run_users(gated, users: list[dict], ratios=RATIOS, random_seeds: int = 2, log=print) -> list[dict]:
    """users: [{"name", "personal": x, "x": eval x, "y": eval y}] -> rows."""
    shape = tuple(gated.cfg["input_shape"])
    rows = []
    for u in users:
        row = {"user": u["name"], "n_eval": int(len(u["y"])), "n_personal": int(len(u["personal"]))}
        row["unpruned"] = evaluate(gated, u["x"], u["y"])
        row["full_static_all_channels"] = evaluate(ppp.prune(gated, [np.ones(w, bool) for w in gated.widths()]),
                                                   u["x"], u["y"])
        for r in ratios:
            res = ppp.personalize(gated, u["personal"], keep_ratio=r, sample_shape=shape)
            row[f"ppp@{r}"] = evaluate(res.module, u["x"], u["y"])
            row[f"ppp_seconds@{r}"] = res.info["seconds"]
            row[f"l1@{r}"] = evaluate(ppp.prune(gated, ppp.l1_masks(gated, r)), u["x"], u["y"])
            rng = np.random.default_rng(0)
            row[f"random@{r}"] = float(np.mean([evaluate(ppp.prune(gated, ppp.random_masks(gated, r, rng)), u["x"], u["y"])
                                                for _ in range(random_seeds)]))
        res = ppp.personalize(gated, u["personal"], threshold=0.5, sample_shape=shape)
        row["ppp@threshold0.5"] = evaluate(res.module, u["x"], u["y"])
        row["threshold_flops"] = res.info["flops_after"]
        rows.append(row)
        log(f"{u['name']}: unpruned {row['unpruned']:.3f} " + " ".join(
            f"r={r}: ppp {row[f'ppp@{r}']:.3f} l1 {row[f'l1@{r}']:.3f} rnd {row[f'random@{r}']:.3f}" for r in ratios))
    return rows


def costs(gated, ratios=RATIOS) -> dict:
    shape = tuple(gated.cfg["input_shape"])
    full = ppp.cost(ppp.prune(gated, [np.ones(w, bool) for w in gated.widths()]), shape)
    gated_cost = ppp.cost(gated, shape)
    out = {"unpruned": {**full, "flops_gated_graph": gated_cost["flops"], "params_gated_graph": gated_cost["params"]}}
    for r in ratios:
        out[r] = ppp.cost(ppp.prune(gated, ppp.l1_masks(gated, r)), shape)
    return out


def _latency(paths: dict, shape, batches=(1, 32), rounds: int = 15, budget_s: float = 0.05) -> dict:
    """ms per call, graphs interleaved round by round (fair on a shared machine): the median and the
    minimum over rounds of the mean time of a ~50 ms burst of calls."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sessions = {k: ort.InferenceSession(str(p), sess_options=so, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    res = {}
    for b in batches:
        x = np.random.default_rng(0).standard_normal((b, *shape)).astype(np.float32)
        times = {k: [] for k in sessions}
        iters = {}
        for k, s in sessions.items():
            for _ in range(5):
                s.run(None, {"x": x})
            t0 = time.perf_counter()
            s.run(None, {"x": x})
            iters[k] = max(3, int(budget_s / max(1e-5, time.perf_counter() - t0)))
        for _ in range(rounds):
            for k, s in sessions.items():
                t0 = time.perf_counter()
                for _ in range(iters[k]):
                    s.run(None, {"x": x})
                times[k].append((time.perf_counter() - t0) / iters[k] * 1000)
        res[f"batch{b}"] = {k: round(float(np.median(v)), 4) for k, v in times.items()}
        res[f"batch{b}_min"] = {k: round(float(np.min(v)), 4) for k, v in times.items()}
    return res


def onnx_side_by_side(gated, meta: dict, personal: np.ndarray, ratios=RATIOS, log=print) -> dict:
    """Export the gated bundle, personalize it with the torch-free path at each ratio, then measure
    initializer bytes, FLOPs and ORT latency of unpruned vs pruned graphs in one run."""
    import onnx

    from edgekit.ppp.export import export_gated
    from edgekit.runtimes.pipelines.ppp import onnx_cost, personalize_bundle

    shape = tuple(gated.cfg["input_shape"])
    with tempfile.TemporaryDirectory(prefix="ppp-bench-") as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "personal.npz", x=personal[:32])
        b = export_gated(gated, meta, tmp, name="gated")
        paths = {"gated (unpruned, main graph)": b.path(b.find("onnx", graph="main")),
                 "static (unpruned, all channels)": b.path(b.find("onnx", graph="static"))}
        out = {"per_ratio": {}}
        full = onnx_cost(onnx.load(str(paths["static (unpruned, all channels)"])), shape)
        out["unpruned_static"] = full
        for r in ratios:
            t0 = time.perf_counter()
            info = personalize_bundle(b.root, tmp / "personal.npz", tmp / f"r{r}", keep_ratio=r)
            wall = time.perf_counter() - t0
            paths[f"ppp@{r}"] = Path(info["bundle"]) / "main.onnx"
            out["per_ratio"][r] = {k: info[k] for k in ("flops_after", "params_after", "initializer_bytes_after",
                                                         "seconds", "max_abs_err")}
            out["per_ratio"][r]["torch_free_total_seconds"] = round(wall, 3)
        log("measuring ORT latency (1 thread, interleaved)")
        out["latency_ms"] = _latency(paths, shape)
    return out


def summarize(rows: list[dict], cst: dict, ratios=RATIOS) -> dict:
    base = np.array([r["unpruned"] for r in rows])
    full = cst["unpruned"]["flops"]
    s = {"users": len(rows), "unpruned_mean_acc": round(float(base.mean()), 4), "per_ratio": {}}
    for r in ratios:
        d = {}
        for m in ("ppp", "l1", "random"):
            acc = np.array([row[f"{m}@{r}"] for row in rows])
            d[m] = {"mean_acc": round(float(acc.mean()), 4), "mean_delta_pts": round(float((acc - base).mean() * 100), 2),
                    "min_delta_pts": round(float((acc - base).min() * 100), 2),
                    "users_within_1pt": int(((base - acc) <= 0.01 + 1e-9).sum())}
        d["flops"] = cst[r]["flops"]
        d["flops_reduction"] = round(full / cst[r]["flops"], 3)
        d["params"] = cst[r]["params"]
        d["ppp_minus_l1_pts"] = round(d["ppp"]["mean_acc"] * 100 - d["l1"]["mean_acc"] * 100, 2)
        d["ppp_seconds_mean"] = round(float(np.mean([row[f"ppp_seconds@{r}"] for row in rows])), 4)
        d["ppp_seconds_max"] = round(float(np.max([row[f"ppp_seconds@{r}"] for row in rows])), 4)
        s["per_ratio"][str(r)] = d
    return s


def environment(seed: int) -> dict:
    import onnx
    import onnxruntime

    return {"machine": f"{platform.system()} {platform.machine()} {platform.processor() or ''}".strip(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "seed": seed,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "note": "shared machine (other jobs running); latency = median of interleaved rounds, 1 ORT thread"}


def plot(summary: dict, out_png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pr = summary["per_ratio"]
    ks = sorted(pr, key=float)
    fl = [pr[k]["flops"] / 1e6 for k in ks]
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, style in (("ppp", "o-"), ("l1", "s--"), ("random", "^:")):
        ax.plot(fl, [pr[k][m]["mean_acc"] * 100 for k in ks], style, label={"ppp": "PPP (no retraining)",
                "l1": "L1 magnitude (no retraining)", "random": "random channels"}[m])
    ax.plot([summary["unpruned_flops"] / 1e6], [summary["unpruned_mean_acc"] * 100], "k*", ms=12, label="unpruned gated")
    ax.set_xlabel("MFLOPs (MACs) per sample")
    ax.set_ylabel("mean accuracy on user's data (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)


def write(result: dict, out_json: Path) -> None:
    out_json.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_json.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    tmp.replace(out_json)
