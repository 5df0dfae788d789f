"""One way to measure every backend: warm-up, then N timed calls with time.perf_counter_ns.

The session call and the raw backend call are timed in alternating pairs on the same inputs, so
the runtime's own overhead (input checks, dict building) is measured side by side. Torch-free
(PyTorch eager timing lives in edgekit.exporters.adapter.torch_eager).
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
from edgekit.runtimes.registry import BACKENDS, open_graph

from edgekit.core.bundle import Bundle
from edgekit.core.errors import BackendUnavailableError, EdgekitError, UsageError
from edgekit.core.inputs import load_validation


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


def example_feeds(bundle: Bundle, graph: str = "main", batch: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """The bundle's stored example inputs (random ones if it has none), tiled to ``batch`` on batch-like axes."""
    rel = f"validation/{graph}.npz"
    g = bundle.graph(graph)
    if rel in bundle.manifest.files:
        feeds = load_validation(bundle, graph)[0]
    else:
        rng = np.random.default_rng(seed)
        ex = g.metadata.get("example_shapes", {})
        feeds = {}
        for s in g.inputs:
            shape = ex.get(s.name) or [d if isinstance(d, int) else 1 for d in s.shape]
            feeds[s.name] = (rng.standard_normal(shape) if np.dtype(s.dtype).kind == "f"
                             else np.zeros(shape)).astype(s.dtype)
    if batch:
        for s in g.inputs:
            if s.shape and isinstance(s.shape[0], str):
                a = feeds[s.name]
                feeds[s.name] = np.ascontiguousarray(np.take(a, np.arange(batch) % a.shape[0], axis=0))
    return feeds


def backend_for(target: str) -> str | None:
    for name, (_ref, targets, _extra) in BACKENDS.items():
        if targets[0] == target:
            return name
    return None


def bench_bundle(bundle: Bundle, graph: str = "main", batch: int | None = None, iters: int = 200,
                 warmup: int = 20, targets: list[str] | None = None,
                 progress: Callable[[str], None] | None = None) -> list[dict]:
    """One row per artifact of ``graph``: accuracy facts from the manifest + measured latency here."""
    check_counts(iters, warmup, batch)
    feeds = example_feeds(bundle, graph, batch)
    n = next(iter(feeds.values())).shape[0] if feeds else 1
    rows = []
    for a in bundle.manifest.artifacts:
        if a.graph != graph or (targets and a.target not in targets):
            continue
        v = a.validation
        row = {"target": a.target, "precision": a.precision, "status": a.status, "reason": a.status_reason,
               "max_abs_err": v.max_abs_err if v else None,
               "top1_agreement": (v.detail or {}).get("top1_agreement") if v else None,
               "size_mb": a.bytes / 1e6, "batch": n}
        backend = backend_for(a.target)
        if a.status in ("ok", "not-validated") and backend:
            try:
                if progress:
                    progress(f"benchmarking {a.target} {a.precision}")
                sess = open_graph(bundle, graph, backend, a.precision)
                row.update(backend=backend, **paired(sess, feeds, warmup, iters, batch=n))
            except (BackendUnavailableError, EdgekitError) as e:
                row["bench_error"] = str(e)
        rows.append(row)
    return rows
