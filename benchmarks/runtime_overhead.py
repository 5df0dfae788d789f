"""Runtime overhead and speed of the embedded default model, measured side by side in one run.

For batch 1 and 32: edgekit Session.run vs the bare ONNX Runtime call (paired, alternating), and
PyTorch eager on the same inputs. Writes benchmarks/results/runtime_overhead.{json,png}.

    python benchmarks/runtime_overhead.py [--iters 2000]
"""
from __future__ import annotations

import argparse
import tempfile

import edgekit
from edgekit.exporters.adapter import torch_eager
from edgekit.runtimes.bench import example_feeds, paired
from edgekit.models import registry

from common import RESULTS, write


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=2000)
    args = ap.parse_args()
    src = registry.get("digits-cnn")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bundle = edgekit.export(src, targets="onnx", out=tmp)
        sess = edgekit.load(bundle.root, backend="onnxruntime")
        for batch in (1, 32):
            feeds = example_feeds(bundle, batch=batch)
            p = paired(sess, feeds, warmup=200, iters=args.iters, batch=batch)
            eager = torch_eager(src.module, feeds, warmup=50, iters=min(args.iters, 500))
            rows.append({"batch": batch, **p, "torch_eager": eager,
                         "ort_speedup_vs_torch": eager["p50_ms"] / p["session"]["p50_ms"]})
            print(f"batch {batch}: session p50 {p['session']['p50_ms'] * 1e3:.1f} µs, raw {p['raw']['p50_ms'] * 1e3:.1f} µs, "
                  f"overhead {p['overhead_us']:.2f} µs ({p['overhead_pct']:.1f}%, budget {p['overhead_budget_us']:.1f} µs, "
                  f"ok={p['overhead_ok']}), torch eager p50 {eager['p50_ms'] * 1e3:.1f} µs -> "
                  f"{rows[-1]['ort_speedup_vs_torch']:.2f}x")
    write("runtime_overhead", {"iters": args.iters, "model": "digits-cnn", "rows": rows})
    plot(rows)


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    labels, vals = [], []
    for r in rows:
        for name, v in (("raw ORT", r["raw"]["p50_ms"]), ("edgekit Session", r["session"]["p50_ms"]),
                        ("PyTorch eager", r["torch_eager"]["p50_ms"])):
            labels.append(f"{name}\nbatch {r['batch']}")
            vals.append(v * 1e3)
    ax.barh(labels, vals, color=["#888", "#2a7", "#c55"] * len(rows))
    ax.set_xlabel("p50 latency (µs), digits-cnn, this CPU")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(RESULTS / "runtime_overhead.png", dpi=120)


if __name__ == "__main__":
    main()
