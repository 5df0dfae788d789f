"""One way to measure every backend: warm-up, then N timed calls with time.perf_counter_ns.

The session call and the raw backend call are timed in alternating pairs on the same inputs, so
the runtime's own overhead (input checks, dict building) is measured side by side; the artifacts of
a bundle are timed interleaved (``interleaved``), so their ratios come from one run. Torch-free
(PyTorch eager timing lives in edgekit.exporters.adapter.torch_eager).
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
from edgekit.runtimes.autoselect import example_feeds
from edgekit.runtimes.registry import BACKENDS, open_graph

from edgekit.core.bundle import Bundle, Validation
from edgekit.core.errors import BackendUnavailableError, EdgekitError, UsageError


def check_counts(iters: int, warmup: int = 0, batch: int | None = None) -> None:
    """Refuse run counts no measurement can come from (--iters 0 used to end in an IndexError)."""
    if iters < 1:
        raise UsageError(f"--iters {iters}: at least one timed run is needed", "use --iters 1 or more (default 100-200)")
    if warmup < 0:
        raise UsageError(f"--warmup {warmup} is negative", "use --warmup 0 or more")
    if batch is not None and batch < 1:
        raise UsageError(f"--batch {batch}: a batch needs at least one sample", "use --batch 1 or more")


def summarize(ns: np.ndarray, batch: int = 1) -> dict[str, float]:
    ms = ns / 1e6
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
            "throughput_per_s": float(batch * 1e3 / ms.mean()) if ms.mean() > 0 else 0.0, "runs": int(len(ns))}


def time_calls(fn: Callable[[Any], Any], arg: Any, warmup: int = 10, iters: int = 100) -> np.ndarray:
    for _ in range(warmup):
        fn(arg)
    out = np.empty(iters, dtype=np.int64)
    pc = time.perf_counter_ns
    for i in range(iters):
        t0 = pc()
        fn(arg)
        out[i] = pc() - t0
    return out


def paired(session: Any, feeds: dict[str, np.ndarray], warmup: int = 20, iters: int = 200, batch: int = 1) -> dict:
    """Time ``session.run`` and the bare backend call in alternating pairs; report both and the overhead."""
    run, raw = session.run, session.backend.raw_call()
    for _ in range(warmup):
        run(feeds)
        raw(feeds)
    s = np.empty(iters, dtype=np.int64)
    r = np.empty(iters, dtype=np.int64)
    pc = time.perf_counter_ns
    for i in range(iters):
        if i & 1:
            t0 = pc(); run(feeds); t1 = pc(); raw(feeds); t2 = pc()  # noqa: E702
            s[i], r[i] = t1 - t0, t2 - t1
        else:
            t0 = pc(); raw(feeds); t1 = pc(); run(feeds); t2 = pc()  # noqa: E702
            r[i], s[i] = t1 - t0, t2 - t1
    over = float(np.median(s - r))
    raw_med = float(np.median(r))
    budget = max(0.03 * raw_med, 10_000.0)
    return {"session": summarize(s, batch), "raw": summarize(r, batch), "overhead_us": over / 1e3,
            "overhead_pct": 100.0 * over / raw_med if raw_med else 0.0, "overhead_budget_us": budget / 1e3,
            "overhead_ok": over <= budget}


def validation_summary(v: Validation | None) -> str:
    """One short line of the numbers that decided a validation (for tables)."""
    if v is None or not v.detail.get("outputs"):
        return "-" if v is None or v.max_abs_err is None else f"err {v.max_abs_err:.2g}"
    parts = []
    for n, o in v.detail["outputs"].items():
        if "tolerance" in o:
            parts.append(f"err/tol {o['max_abs_err'] / o['tolerance']:.2g}" if o["tolerance"] else "err 0")
        elif "top5_contains" in o:
            parts.append(f"top1 {o['top1_agreement']:.3f} top5 {o['top5_contains']:.3f}")
        elif "top1_agreement" in o:
            parts.append(f"agree {o['top1_agreement']:.3f}")
        elif "sqnr_db" in o:
            parts.append(f"SQNR {o['sqnr_db']:.1f}dB cos {o['cos_min']:.4f}")
    shown = sorted(set(parts), key=parts.index)
    return "; ".join(shown[:2]) + (" …" if len(shown) > 2 else "")


def backend_for(target: str) -> str | None:
    for name, (_ref, targets, _extra) in BACKENDS.items():
        if targets[0] == target:
            return name
    return None


def interleaved(sessions: list[Any], feeds: dict[str, np.ndarray], warmup: int = 20, iters: int = 200,
                batch: int = 1) -> list[dict]:
    """``paired`` for several sessions side by side: each round times every session (rotating order) on
    the same inputs with the same timer, so machine noise hits all of them alike; one untimed call
    precedes each session's pair (a runtime waking up after another one ran is not what a device sees)."""
    calls = [(s.run, s.backend.raw_call()) for s in sessions]
    for run, raw in calls:
        for _ in range(warmup):
            run(feeds)
            raw(feeds)
    n = len(calls)
    s_ns = np.empty((n, iters), dtype=np.int64)
    r_ns = np.empty((n, iters), dtype=np.int64)
    pc = time.perf_counter_ns
    for i in range(iters):
        for k in range(n):
            j = (k + i) % n
            run, raw = calls[j]
            raw(feeds)  # untimed: absorbs the switch from another runtime (its threads going idle)
            if i & 1:
                t0 = pc(); run(feeds); t1 = pc(); raw(feeds); t2 = pc()  # noqa: E702
                s_ns[j, i], r_ns[j, i] = t1 - t0, t2 - t1
            else:
                t0 = pc(); raw(feeds); t1 = pc(); run(feeds); t2 = pc()  # noqa: E702
                r_ns[j, i], s_ns[j, i] = t1 - t0, t2 - t1
    out = []
    for j in range(n):
        over, raw_med = float(np.median(s_ns[j] - r_ns[j])), float(np.median(r_ns[j]))
        budget = max(0.03 * raw_med, 10_000.0)
        out.append({"session": summarize(s_ns[j], batch), "raw": summarize(r_ns[j], batch), "overhead_us": over / 1e3,
                    "overhead_pct": 100.0 * over / raw_med if raw_med else 0.0, "overhead_budget_us": budget / 1e3,
                    "overhead_ok": over <= budget})
    return out


def bench_bundle(bundle: Bundle, graph: str = "main", batch: int | None = None, iters: int = 200,
                 warmup: int = 20, targets: list[str] | None = None,
                 progress: Callable[[str], None] | None = None) -> list[dict]:
    """One row per artifact of ``graph``: accuracy facts from the manifest + latency measured here, every
    runnable artifact timed side by side (interleaved); ``vs_fastest`` = p50 / the fastest p50."""
    check_counts(iters, warmup, batch)
    feeds = example_feeds(bundle, graph, batch)
    n = next(iter(feeds.values())).shape[0] if feeds else 1
    rows, opened = [], []
    for a in bundle.manifest.artifacts:
        if a.graph != graph or (targets and a.target not in targets):
            continue
        v = a.validation
        row = {"target": a.target, "precision": a.precision, "status": a.status, "reason": a.status_reason,
               "max_abs_err": v.max_abs_err if v else None,
               "top1_agreement": (v.detail or {}).get("top1_agreement") if v else None,
               "metric": validation_summary(v), "size_mb": a.bytes / 1e6, "batch": n}
        backend = backend_for(a.target)
        if a.status in ("ok", "not-validated") and backend:
            try:
                if progress:
                    progress(f"opening {a.target} {a.precision}")
                sess = open_graph(bundle, graph, backend, a.precision)
                row["backend"] = backend
                sess.run(feeds)  # one trial call: an input this artifact refuses (a bounded dim) is its
                sess.backend.raw_call()(feeds)  # row's error, not the end of the whole side-by-side timing
                opened.append((row, sess))
            except (BackendUnavailableError, EdgekitError) as e:
                row["bench_error"] = str(e)
        rows.append(row)
    if opened:
        if progress:
            progress(f"timing {len(opened)} artifact(s) side by side")
        for (row, _), res in zip(opened, interleaved([s for _, s in opened], feeds, warmup, iters, batch=n)):
            row.update(res)
        best = min(r["session"]["p50_ms"] for r, _ in opened)
        for r, _ in opened:
            r["vs_fastest"] = r["session"]["p50_ms"] / best if best else 1.0
    return rows


def plot_rows(rows: list[dict], path: str, title: str) -> str:
    """A bar chart of every timed artifact's p50 latency (p90 as the whisker) -> ``path`` (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BackendUnavailableError("--plot needs matplotlib, which is not installed",
                                      "pip install matplotlib (or drop --plot)") from None
    timed = [r for r in rows if "session" in r]
    if not timed:
        raise UsageError("no artifact could be timed here, so there is nothing to plot", "drop --plot")
    names = [f"{r.get('graph', 'main') + '/' if r.get('graph', 'main') != 'main' else ''}{r['target']}\n"
             f"{r['precision']}" for r in timed]
    p50 = [r["session"]["p50_ms"] for r in timed]
    p90 = [r["session"]["p90_ms"] for r in timed]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(timed) + 1.5), 3.6))
    ax.bar(range(len(timed)), p50, yerr=[[0] * len(p50), [b - a for a, b in zip(p50, p90)]], capsize=3,
           color=["#4c72b0" if r["precision"].startswith("fp") else "#dd8452" for r in timed])
    ax.set_xticks(range(len(timed)), names, fontsize=8)
    ax.set_ylabel("latency p50 (ms), whisker p90")
    ax.set_title(title, fontsize=9)
    for i, r in enumerate(timed):
        ax.text(i, p50[i], f"{r['vs_fastest']:.2f}x", ha="center", va="bottom", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
