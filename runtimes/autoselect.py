"""``backend="auto"``: the fastest validated artifact on this machine, measured once and cached.

On the first ``load`` of a bundle, every validated (status ok) artifact of the graph whose own backend
can run here is opened and timed on the bundle's stored example in interleaved blocks (a short run:
about one second at most, less when one candidate is clearly fastest). The pick and the measured
table are cached per machine (CPU model, core count, backend versions, $EDGEKIT_THREADS) and bundle
(sha256 of its manifest) in ``$EDGEKIT_CACHE/auto`` (default ``~/.cache/edgekit/auto``), like
TensorRT's engine cache; later loads open the cached pick only.

``EDGEKIT_AUTO=order`` (or a failed measurement) falls back to the fixed order of the backend table
(TensorRT, Core ML, OpenVINO, ONNX Runtime). TensorRT is picked without measuring when it can run:
its engines take minutes to build. Torch-free.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgekit.core.bundle import Artifact, Bundle
from edgekit.core.errors import UsageError, first_line
from edgekit.core.inputs import load_validation

AUTO_MODES = ("measure", "order")
UNMEASURED = ("tensorrt",)       # preferred without a timing run (an engine build takes minutes)
BUDGET_S = 1.0                   # timing budget of a first load (opening sessions not included)
MIN_ROUNDS, MAX_ROUNDS, BLOCK = 3, 200, 4
CLEAR_WIN = 1.25                 # stop early once the best is this much faster than the runner-up
CACHE_LIMIT = 1 << 20            # bytes of a cache file read back
PACKAGES = {"coreml": "coremltools"}  # backend -> the distribution whose version a measurement depends on


def auto_mode() -> str:
    mode = os.environ.get("EDGEKIT_AUTO", "measure").strip().lower() or "measure"
    if mode not in AUTO_MODES:
        raise UsageError(f"EDGEKIT_AUTO={mode!r} is not a mode", f"set it to one of {', '.join(AUTO_MODES)}")
    return mode


def cache_dir() -> Path:
    root = os.environ.get("EDGEKIT_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "edgekit") / "auto"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("model name", "Hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(backends: list[str]) -> dict[str, Any]:
    """What a measurement depends on besides the bundle (the cache key's machine half)."""
    from importlib import metadata

    versions = {}
    for pkg in sorted({PACKAGES.get(b, b) for b in backends}):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "?"
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "system": f"{platform.system()} {platform.machine()}",
            "threads": os.environ.get("EDGEKIT_THREADS", ""), "versions": versions}


def manifest_sha256(bundle: Bundle) -> str:
    return hashlib.sha256((bundle.root / "manifest.json").read_bytes()).hexdigest()


def cache_key(bundle: Bundle, graph: str, precision: str | None, backends: list[str]) -> str:
    raw = json.dumps([machine(backends), manifest_sha256(bundle), graph, precision], sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def read_cache(key: str) -> dict | None:
    p = cache_dir() / f"{key}.json"
    try:
        if not p.is_file() or p.stat().st_size > CACHE_LIMIT:
            return None
        d = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and isinstance(d.get("picked"), str) else None


def write_cache(key: str, record: dict) -> str:
    """Write atomically; returns where it went, or why it could not (a read-only home is no error)."""
    d = cache_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".auto-", suffix=".json", dir=d)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, d / f"{key}.json")
        return str(d / f"{key}.json")
    except OSError as e:
        return f"not cached ({e.strerror or type(e).__name__})"


def label(name: str, art: Artifact) -> str:
    return f"{name}:{art.target}/{art.precision}"


def example_feeds(bundle: Bundle, graph: str = "main", batch: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """The bundle's stored example inputs (random ones if it has none), tiled to ``batch`` on batch-like axes."""
    rel = f"validation/{graph}.npz"
    g = bundle.graph(graph)
    if rel in bundle.manifest.files:
        feeds = load_validation(bundle, graph)[0]  # size and dtype checked (core/inputs.py)
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


def time_blocks(impls: list[Any], feeds: dict, budget_s: float) -> list[list[int]]:
    """Per-call ns of each impl, run in rotating blocks of BLOCK calls (the first call of a block, which
    pays for another runtime's threads going idle, is not counted)."""
    times: list[list[int]] = [[] for _ in impls]
    pc = time.perf_counter_ns
    end = pc() + int(budget_s * 1e9)
    for r in range(MAX_ROUNDS):
        for k in range(len(impls)):
            i = (k + r) % len(impls)
            run = impls[i].run
            run(feeds)
            for _ in range(BLOCK - 1):
                t0 = pc()
                run(feeds)
                times[i].append(pc() - t0)
        if r + 1 >= MIN_ROUNDS:
            meds = sorted(float(np.median(t)) for t in times)
            if pc() > end or (r + 1 >= 10 and len(meds) > 1 and meds[0] * CLEAR_WIN < meds[1]):
                break
    return times


def measure(cands: list[tuple[str, Artifact]], opener: Callable[[str, Artifact], Any], feeds: dict,
            budget_s: float = BUDGET_S) -> tuple[int | None, Any, list[dict]]:
    """(index of the fastest candidate, its opened backend, the table); candidates that fail to open or
    run are listed with the reason and left out."""
    impls, idx, table = [], [], []
    for i, (name, art) in enumerate(cands):
        row: dict[str, Any] = {"candidate": label(name, art), "backend": name, "target": art.target,
                               "precision": art.precision}
        t0 = time.perf_counter()
        try:
            impl = opener(name, art)
            impl.run(feeds)
        except Exception as e:  # a backend that cannot run this artifact here is no candidate
            row["error"] = f"{type(e).__name__}: {first_line(e, 200)}"
            table.append(row)
            continue
        row["open_s"] = round(time.perf_counter() - t0, 3)
        impls.append(impl)
        idx.append(i)
        table.append(row)
    if not impls:
        return None, None, table
    times = time_blocks(impls, feeds, budget_s) if len(impls) > 1 else [[0]]
    meds = [float(np.median(t)) for t in times]
    for j, i in enumerate(idx):
        row = next(r for r in table if r["candidate"] == label(*cands[i]))
        if len(impls) > 1:
            row.update(p50_us=round(meds[j] / 1e3, 2), calls=len(times[j]))
    best = int(np.argmin(meds))
    for r in table:
        if "p50_us" in r:
            r["vs_best"] = round(r["p50_us"] / (meds[best] / 1e3), 3) if meds[best] else 1.0
    return idx[best], impls[best], table
