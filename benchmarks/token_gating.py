"""Token-gating benchmark: knob sweep vs ungated MiniLM-L6 and matched-FLOPs baselines.

Needs the checkpoints written by scripts/train_tokengate.py in /tmp/edgekit_tokengate
(ungated.pt, gated_k*.pt). Writes benchmarks/results/token_gating.json and .png.
  python benchmarks/token_gating.py [--lat-n 200] [--skip-export]
Everything runs on one thread (OMP_NUM_THREADS=1, torch 1 thread, ORT intra-op 1 thread):
the machine is shared, and ratios are measured side by side (interleaved) in one run.
"""
from __future__ import annotations

import argparse
import json
import re
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("EDGEKIT_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


from token_gating_lib import (baseline_curves, latency, matched, matmul_scaling, parity, plot,  # noqa: E402
                             robustness)

CACHE = Path(os.environ.get("EDGEKIT_TOKENGATE_CACHE", "/tmp/edgekit_tokengate"))
OUT = ROOT / "benchmarks" / "results"


def control_row(T, data: dict) -> dict:
    """Training-budget control: CACHE/ungated_more.pt (ungated, trained as long as the gated runs)."""
    um, um_meta = T.load_model(CACHE / "ungated_more.pt")
    row = {"steps_after_ungated": um_meta.get("steps"), "kd": um_meta.get("kd"),
           **{s: T.evaluate(um, *data[s], rules={}) for s in data}}
    print("ungated_more", {s: round(row[s]["accuracy"], 4) for s in data}, flush=True)
    return row


def topk_ft_row(T, data: dict) -> dict:
    """Fair-budget baseline: CACHE/topk_ft.pt, a fixed top-k-by-attention schedule (no learned
    gates) given the same frozen-gate fine-tune as the gated models (scripts/train_tokengate.py topk_ft)."""
    m, meta = T.load_model(CACHE / "topk_ft.pt")
    row = {"ratios": meta.get("ratios"), "hard_steps": meta.get("hard_steps"), "kd": meta.get("kd"),
           **{s: T.evaluate(m, *data[s]) for s in data}}
    print("topk_ft", {s: (round(row[s]["accuracy"], 4), round(row[s]["flops"] / 1e6, 1)) for s in data}, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lat-n", type=int, default=200, help="examples timed at batch 1")
    ap.add_argument("--lat-batches", type=int, default=12, help="batches of 32 timed")
    ap.add_argument("--point", type=float, default=None, help="knob of the operating point (default: picked on dev)")
    ap.add_argument("--lat-extra", default="", help="comma-separated checkpoint names (e.g. gated_k1.8.pt) "
                    "whose bundles are also timed in the same latency rounds")
    ap.add_argument("--tag", default=None, help="only checkpoints gated_k<knob><tag>.pt (default: all)")
    ap.add_argument("--only-control", action="store_true",
                    help="evaluate CACHE/ungated_more.pt and add it to the existing results JSON")
    a = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    from edgekit.tokengate import train as T
    from edgekit.tokengate.rotten_tomatoes import LABELS, load_split

    t_start = time.time()
    tok = T.minilm_path() / "tokenizer.json"
    texts = {s: load_split(s) for s in ("dev", "test")}
    data = {s: (T.encode_all(texts[s][0], tok, 64), texts[s][1]) for s in texts}
    if a.only_control:
        res = json.loads((OUT / "token_gating.json").read_text())
        res["ungated_more_control"] = control_row(T, data)
        tmp = OUT / "token_gating.json.tmp"
        tmp.write_text(json.dumps(res, indent=1, default=float))
        os.replace(tmp, OUT / "token_gating.json")
        return
    base, base_meta = T.load_model(CACHE / "ungated.pt")
    # "flops": the last layer computes only [CLS] (exact); "flops_plain_last_layer": every row
    res: dict = {"ungated": {s: T.evaluate(base, *data[s], rules={}) for s in data}, "gated": []}
    print("ungated", {s: round(v["accuracy"], 4) for s, v in res["ungated"].items()}, flush=True)
    if (CACHE / "ungated_more.pt").exists() and not (CACHE / "ungated_more.pt.tmp").exists():   # training-budget control: ungated, trained as long as gated
        res["ungated_more_control"] = control_row(T, data)
    if (CACHE / "topk_ft.pt").exists():
        res["topk_finetuned"] = topk_ft_row(T, data)
    pat = re.compile(r"gated_k([0-9.]+)" + (re.escape(a.tag) if a.tag is not None else ".*") + "$")
    ckpts = sorted([p for p in CACHE.glob("gated_k*.pt") if pat.match(p.stem)],
                   key=lambda p: float(pat.match(p.stem).group(1)))
    models = {}
    for ck in ckpts:
        m, meta = T.load_model(ck)
        k = float(meta["knob"])
        models[ck.name] = m
        row = {"knob": k, "checkpoint": ck.name, "steps": meta.get("steps"), "hard_steps": meta.get("hard_steps", 0),
               "recipe": meta.get("recipe", f"{meta.get('steps')} gate steps")
               + ("" if "sparsity" in meta else ", sparsity flops")   # checkpoints from before the choice
               + (f", gate lr {meta['gate_lr']:g}" if meta.get("gate_lr") is not None else ""), "kd": meta.get("kd", 0),
               "phase1_dev": meta.get("phase1_dev"), "rules": {str(l): r["open"] for l, r in m.rules().items()}}
        for s in data:
            row[s] = T.evaluate(m, *data[s])
        res["gated"].append(row)
        print("knob", k, {s: (round(row[s]["accuracy"], 4), round(row[s]["flops"] / 1e6, 1)) for s in data}, flush=True)
    f0 = res["ungated"]["dev"]["flops_plain_last_layer"]
    for r in res["gated"]:
        r["dev_flops_reduction"] = f0 / r["dev"]["flops"]
    if a.point is None:  # pre-declared rule, on dev: the most accurate point with >= 2x fewer FLOPs
        ok = [r for r in res["gated"] if r["dev_flops_reduction"] >= 2.0]
        pick = (max(ok, key=lambda r: (r["dev"]["accuracy"], -r["dev"]["flops"])) if ok
                else max(res["gated"], key=lambda r: r["dev_flops_reduction"]))
    else:
        pick = max((r for r in res["gated"] if abs(r["knob"] - a.point) < 1e-9), key=lambda r: r["dev"]["accuracy"])
    res["operating_point"] = {"knob": pick["knob"], "checkpoint": pick["checkpoint"], "recipe": pick["recipe"], "chosen_on": "dev" if a.point is None else "--point",
                              "rule": "highest dev accuracy among knobs with >= 2x fewer dev FLOPs than ungated"}
    # knob monotonicity on dev
    from collections import Counter
    recipe = Counter(r["recipe"] for r in res["gated"]).most_common(1)[0][0]   # one training recipe
    gs = sorted([r for r in res["gated"] if r["recipe"] == recipe], key=lambda r: r["knob"])
    res["monotone_dev"] = {"recipe": recipe, "knobs": [r["knob"] for r in gs],
        "flops_nonincreasing": all(x["dev"]["flops"] >= y["dev"]["flops"] for x, y in zip(gs, gs[1:])),
        "accuracy_nonincreasing": all(x["dev"]["accuracy"] >= y["dev"]["accuracy"] for x, y in zip(gs, gs[1:]))}
    # baselines on test (ungated fine-tuned weights, no learned gates)
    print("baselines ...", flush=True)
    res["baselines"] = baseline_curves(base, data["test"], T)
    u = res["ungated"]["test"]
    res["ungated_cls_last_row"] = {"test_accuracy": u["accuracy"], "test_flops": u["flops"],
                                   "test_flops_reduction": u["flops_plain_last_layer"] / u["flops"]}
    if "topk_finetuned" in res:
        res["topk_finetuned"]["test_flops_reduction"] = u["flops_plain_last_layer"] / res["topk_finetuned"]["test"]["flops"]
    for r in res["gated"]:
        r["test_matched_baselines"] = matched(res["baselines"], r["test"]["flops"])
        r["test_flops_reduction"] = u["flops_plain_last_layer"] / r["test"]["flops"]
        r["test_flops_reduction_vs_ungated_cls_last"] = u["flops"] / r["test"]["flops"]
    # export operating point + ungated, parity and latency
    m = models[pick["checkpoint"]]
    import shutil
    import tempfile
    from edgekit.tokengate.export import export_gated, export_ungated
    work = Path(tempfile.mkdtemp(prefix="tg-bench-"))
    t0 = time.time()
    from edgekit.tokengate.export import export_ungated_single_bundle
    gb = export_gated(m, work, "gated", targets=("onnx", "openvino"), max_len=64, tokenizer_json=tok, labels=LABELS)
    ub = export_ungated(base, work, "ungated", targets=("onnx",), labels=LABELS)
    ubc = export_ungated(base, work, "ungated_cls", targets=("onnx",), labels=LABELS, cls_last=True)
    u1 = export_ungated_single_bundle(base, work, "ungated_b1")
    u1c = export_ungated_single_bundle(base, work, "ungated_b1_cls", cls_last=True)
    res["export"] = {"seconds": time.time() - t0, "gated_artifacts": [
        {"graph": x.graph, "target": x.target, "status": x.status,
         "max_abs_err": x.validation.max_abs_err if x.validation else None} for x in gb.manifest.artifacts],
        "ungated_status": [x.status for b in (ub, ubc, u1, u1c) for x in b.manifest.artifacts],
        "gated_graphs": list(gb.manifest.graphs),
        "gated_onnx_bytes": sum(x.bytes for x in gb.manifest.artifacts if x.target == "onnx"),
        "ungated_onnx_bytes": sum(x.bytes for x in ub.manifest.artifacts if x.target == "onnx")}
    print("exported", res["export"]["seconds"], flush=True)
    res["parity"] = {f"{be}_batch{bs}": parity(gb, m, data["test"], be, bs)
                     for be in ("onnxruntime", "openvino") for bs in (32, 1)}
    print("parity", json.dumps(res["parity"], indent=1), flush=True)
    res["robustness"] = robustness(gb)
    extra = {}
    for name in [x for x in a.lat_extra.split(",") if x]:
        key = Path(name).stem
        extra[key] = export_gated(models[name], work, key, targets=("onnx",), max_len=64, tokenizer_json=tok,
                                  labels=LABELS)
    res["latency"] = latency(gb, {"plain": ub, "cls_last": ubc, "b1": u1, "b1_cls_last": u1c}, m, base,
                             data["test"], a.lat_n, a.lat_batches, extra=extra)
    res["latency"]["extra_points"] = {k: next(r for r in res["gated"] if r["checkpoint"] == k + ".pt")["knob"]
                                      for k in extra}
    print("latency", json.dumps(res["latency"], indent=1), flush=True)
    res["matmul_scaling"] = matmul_scaling()
    print("matmul scaling", res["matmul_scaling"], flush=True)
    shutil.rmtree(work, ignore_errors=True)
    import onnxruntime
    import openvino
    import transformers
    res["env"] = {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
                  "python": platform.python_version(), "torch": torch.__version__,
                  "transformers": transformers.__version__, "onnxruntime": onnxruntime.__version__,
                  "openvino": openvino.__version__, "threads": 1, "seed": 0,
                  "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                  "note": "shared 2-core machine, other jobs running: absolute times are noisy; "
                          "ratios are measured interleaved", "bench_seconds": time.time() - t_start,
                  "ungated_train": base_meta}
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = OUT / "token_gating.json.tmp"
    tmp.write_text(json.dumps(res, indent=1, default=float))
    os.replace(tmp, OUT / "token_gating.json")
    plot(res, OUT / "token_gating.png")
    print("wrote", OUT / "token_gating.json", flush=True)


if __name__ == "__main__":
    main()
