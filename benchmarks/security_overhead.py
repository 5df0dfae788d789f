"""What the bundle/session safety checks cost, measured side by side in one run (interleaved A/B pairs).

1. The finiteness check in Session.check on the embedded default (digits CNN, ONNX Runtime): the same
   check() with the check on (default) and off (allow_nonfinite=True), alternating, at batch 1 and 32;
   per-pair differences (median, p10-p90).
2. Opening a 4-artifact bundle (ONNX + OpenVINO at fp32 + fp16) for ONNX Runtime: every file hashed at
   load (verify="all", what loading did before) vs only the manifest and the used artifact ("used", what
   edgekit.load does now); alternating; per-pair ratios (median, p10-p90).

Writes benchmarks/results/security_overhead.json. Run:
    python benchmarks/security_overhead.py [--pairs 20000] [--load-pairs 60]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
from common import write
from edgekit.runtimes import open_graph

import edgekit
from edgekit.core.bundle import Bundle
from edgekit.models import registry


def _spread(a: np.ndarray) -> dict:
    return {"median": float(np.median(a)), "p10": float(np.percentile(a, 10)), "p90": float(np.percentile(a, 90))}


def check_overhead(bundle: Bundle, pairs: int) -> list[dict]:
    on = open_graph(bundle, "main", "onnxruntime")
    off = open_graph(bundle, "main", "onnxruntime", allow_nonfinite=True)
    rng = np.random.default_rng(0)
    rows, pc = [], time.perf_counter_ns
    for batch in (1, 32):
        feeds = {"x": rng.standard_normal((batch, 1, 8, 8)).astype(np.float32)}
        a, b = np.empty(pairs), np.empty(pairs)
        for i in range(pairs):
            if i & 1:
                t0 = pc(); on.check(feeds); t1 = pc(); off.check(feeds); t2 = pc()  # noqa: E702
                a[i], b[i] = t1 - t0, t2 - t1
            else:
                t0 = pc(); off.check(feeds); t1 = pc(); on.check(feeds); t2 = pc()  # noqa: E702
                b[i], a[i] = t1 - t0, t2 - t1
        raw = on.backend.raw_call()
        t_raw = np.median([(lambda t0: (raw(feeds), pc() - t0)[1])(pc()) for _ in range(2000)])
        rows.append({"batch": batch, "check_on_us": _spread(a / 1e3), "check_off_us": _spread(b / 1e3),
                     "added_us": _spread((a - b) / 1e3), "raw_call_us": float(t_raw / 1e3)})
    return rows


def load_time(root, pairs: int) -> dict:
    def open_with(mode: str) -> float:
        t0 = time.perf_counter()
        open_graph(Bundle.load(root, verify=mode), "main", "onnxruntime")
        return time.perf_counter() - t0

    def bundle_only(mode: str) -> float:
        t0 = time.perf_counter()
        b = Bundle.load(root, verify=mode)
        b.path(b.find("onnx", precision="fp32"))
        return time.perf_counter() - t0

    out = {}
    for name, fn in (("bundle_load_and_verify", bundle_only), ("load_and_open_session", open_with)):
        fn("all"), fn("used")  # warm the page cache and the libraries
        alls, useds = [], []
        for i in range(pairs):
            first, second = ("all", "used") if i & 1 else ("used", "all")
            t = {first: fn(first), second: fn(second)}
            alls.append(t["all"])
            useds.append(t["used"])
        alls, useds = np.array(alls), np.array(useds)
        out[name] = {"all_ms": _spread(alls * 1e3), "used_ms": _spread(useds * 1e3),
                     "ratio_all_over_used": _spread(alls / useds)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=20000)
    ap.add_argument("--load-pairs", type=int, default=60)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        b = edgekit.export(registry.get("digits-cnn"), targets="onnx,openvino", precision="fp32,fp16", out=tmp)
        sizes = {a.path: a.bytes for a in b.manifest.artifacts}
        result = {"seed": 0, "pairs": args.pairs, "check": check_overhead(b, args.pairs),
                  "bundle": {"artifacts": sizes, "load_pairs": args.load_pairs},
                  "load": load_time(b.root, args.load_pairs)}
    path = write("security_overhead", result)
    for r in result["check"]:
        print(f"batch {r['batch']}: finiteness check adds {r['added_us']['median']:.2f} us "
              f"(p10 {r['added_us']['p10']:.2f}, p90 {r['added_us']['p90']:.2f}); raw ORT call {r['raw_call_us']:.1f} us")
    for k, v in result["load"].items():
        print(f"{k}: all {v['all_ms']['median']:.2f} ms, used {v['used_ms']['median']:.2f} ms, "
              f"ratio {v['ratio_all_over_used']['median']:.2f} (p10 {v['ratio_all_over_used']['p10']:.2f}, "
              f"p90 {v['ratio_all_over_used']['p90']:.2f})")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
