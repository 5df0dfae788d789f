"""How much faster can token gating make batch-1 ORT inference on THIS machine, at best?

Measures the whole ungated MiniLM encoder as one batch-1 ORT graph (the same graph and exporter as
the benchmark's ungated batch-1 reference, 1 intra-op thread) at sequence lengths 1..64, then, for
every gated point in ``benchmarks/results/token_gating.json``, estimates the latency the gated
model would have if gating (scores, sort, gather) cost nothing: each of the 6 layers costs 1/6 of
the whole encoder at the number of tokens that layer processes (test averages), and the
[CLS]-only last layer 1/6 of the encoder at one token. ceiling = t(ungated length) / that sum.
The timing does not depend on the weights, so the pretrained (not fine-tuned) MiniLM is used and
no checkpoint is needed. Interleaved rounds in random order; medians.

  python benchmarks/token_gating_ceiling.py      # ~2 min -> benchmarks/results/token_gating_ceiling.json
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"

import numpy as np  # noqa: E402


def encoder_scaling(lengths=(1, 2, 3, 5, 8, 12, 18, 24, 27, 32, 48, 64), rounds: int = 60) -> dict[int, float]:
    import onnxruntime as ort
    import torch

    from edgekit.tokengate import train as T
    from edgekit.tokengate.export import export_ungated_single

    torch.set_num_threads(1)
    model = T.load_minilm().eval()
    with tempfile.TemporaryDirectory() as d:
        path = export_ungated_single(model, Path(d) / "ungated_b1.onnx")
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    rng = np.random.default_rng(0)
    times: dict[int, list[float]] = {n: [] for n in lengths}
    for r in range(rounds + 5):
        for n in rng.permutation(lengths):
            ids = np.concatenate([[101], rng.integers(2000, 20000, int(n) - 1)])[None].astype(np.int64)
            t = time.perf_counter()
            sess.run(None, {name: ids})
            if r >= 5:          # warm-up rounds
                times[int(n)].append(time.perf_counter() - t)
    return {n: 1e3 * float(np.median(v)) for n, v in times.items()}


def ceiling(t: dict[int, float], tokens_per_layer: list[float]) -> dict:
    ns = sorted(t)
    f = lambda x: float(np.interp(x, ns, [t[n] for n in ns]))  # noqa: E731
    layers = len(tokens_per_layer)
    gated = sum(f(x) for x in tokens_per_layer[:-1]) / layers + f(1) / layers   # last: [CLS] row
    ungated = f(tokens_per_layer[0])
    return {"ungated_ms": ungated, "free_gating_ms": gated, "ceiling": ungated / gated}


def main() -> dict:
    src = json.loads((RESULTS / "token_gating.json").read_text())
    t = encoder_scaling()
    b1 = src["latency"]["batch1"]
    lat = {"operating_point": b1["speedup_ort_mean"],
           **{k[len("speedup_ort_mean_"):]: v for k, v in b1.items()
              if k.startswith("speedup_ort_mean_gated_")}}
    rows = []
    for g in src["gated"]:
        tp = g["test"]["tokens_per_layer"]
        row = {"checkpoint": g["checkpoint"], "knob": g["knob"], "test_acc": g["test"]["accuracy"],
               "tokens_per_layer": tp, **ceiling(t, tp)}
        rows.append(row)
        print(f"{g['checkpoint']:24s} knob {g['knob']:<5} test {100 * g['test']['accuracy']:.2f} % "
              f"tokens {[round(x, 1) for x in tp]} -> ceiling {row['ceiling']:.2f}x", flush=True)
    import onnxruntime
    res = {"benchmark": "token_gating_ceiling", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "what": __doc__.strip().splitlines()[0], "ort_version": onnxruntime.__version__,
           "threads": 1, "encoder_ms_by_length": {str(k): v for k, v in t.items()},
           "points": rows, "measured_batch1_speedup_ort_mean": lat}
    print("whole-encoder batch-1 ms by length:", {k: round(v, 2) for k, v in t.items()})
    (RESULTS / "token_gating_ceiling.json").write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
