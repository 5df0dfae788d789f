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

import numpy as np  # noqa: E402

from token_gating_lib import (baseline_curves, latency, matched, onegraph_parity, parity, plot,  # noqa: E402
                             robustness)

CACHE = Path(os.environ.get("EDGEKIT_TOKENGATE_CACHE", "/tmp/edgekit_tokengate"))
OUT = ROOT / "benchmarks" / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lat-n", type=int, default=200, help="examples timed at batch 1")
    ap.add_argument("--lat-batches", type=int, default=12, help="batches of 32 timed")
    ap.add_argument("--point", type=float, default=None, help="knob of the operating point (default: picked on dev)")
    a = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    from edgekit.compress import token_gating_train as T
    from edgekit.data.rotten_tomatoes import LABELS, load_split

    t_start = time.time()
    tok = T.minilm_path() / "tokenizer.json"
    texts = {s: load_split(s) for s in ("dev", "test")}
    data = {s: (T.encode_all(texts[s][0], tok, 64), texts[s][1]) for s in texts}
    base, base_meta = T.load_model(CACHE / "ungated.pt")
    res: dict = {"ungated": {s: T.evaluate(base, *data[s], rules={}) for s in data}, "gated": []}
    print("ungated", {s: round(v["accuracy"], 4) for s, v in res["ungated"].items()}, flush=True)
    ckpts = sorted(CACHE.glob("gated_k*.pt"), key=lambda p: float(p.stem[7:]))
    models = {}
    for ck in ckpts:
        m, meta = T.load_model(ck)
        k = float(meta["knob"])
        models[k] = m
        row = {"knob": k, "steps": meta.get("steps"), "rules": {str(l): r["open"] for l, r in m.rules().items()}}
        for s in data:
            row[s] = T.evaluate(m, *data[s])
        res["gated"].append(row)
        print("knob", k, {s: (round(row[s]["accuracy"], 4), round(row[s]["flops"] / 1e6, 1)) for s in data}, flush=True)
    f0 = res["ungated"]["dev"]["flops"]
    dev_acc0 = res["ungated"]["dev"]["accuracy"]
    if a.point is None:  # most FLOPs saved while within 1 point of ungated on dev
        ok = [r for r in res["gated"] if r["dev"]["accuracy"] >= dev_acc0 - 0.01]
        pick = min(ok, key=lambda r: r["dev"]["flops"]) if ok else min(res["gated"], key=lambda r: -r["dev"]["accuracy"])
    else:
        pick = next(r for r in res["gated"] if abs(r["knob"] - a.point) < 1e-9)
    res["operating_point"] = {"knob": pick["knob"], "chosen_on": "dev" if a.point is None else "--point"}
    # knob monotonicity on dev
    from collections import Counter
    recipe = Counter(r["steps"] for r in res["gated"]).most_common(1)[0][0]   # one training recipe
    gs = sorted([r for r in res["gated"] if r["steps"] == recipe], key=lambda r: r["knob"])
    res["monotone_dev"] = {"steps": recipe, "knobs": [r["knob"] for r in gs],
        "flops_nonincreasing": all(x["dev"]["flops"] >= y["dev"]["flops"] for x, y in zip(gs, gs[1:])),
        "accuracy_nonincreasing": all(x["dev"]["accuracy"] >= y["dev"]["accuracy"] for x, y in zip(gs, gs[1:]))}
    # baselines on test (ungated fine-tuned weights, no learned gates)
    print("baselines ...", flush=True)
    res["baselines"] = baseline_curves(base, data["test"], T)
    for r in res["gated"]:
        r["test_matched_baselines"] = matched(res["baselines"], r["test"]["flops"])
        r["test_flops_reduction"] = res["ungated"]["test"]["flops"] / r["test"]["flops"]
        r["dev_flops_reduction"] = f0 / r["dev"]["flops"]
    # export operating point + ungated, parity and latency
    m = models[pick["knob"]]
    import shutil
    import tempfile
    from edgekit.compress.token_gating_export import export_gated, export_ungated
    work = Path(tempfile.mkdtemp(prefix="tg-bench-"))
    t0 = time.time()
    gb = export_gated(m, work, "gated", targets=("onnx", "openvino"), max_len=64, tokenizer_json=tok, labels=LABELS)
    ub = export_ungated(base, work, "ungated", targets=("onnx",), labels=LABELS)
    res["export"] = {"seconds": time.time() - t0, "gated_artifacts": [
        {"graph": x.graph, "target": x.target, "status": x.status,
         "max_abs_err": x.validation.max_abs_err if x.validation else None} for x in gb.manifest.artifacts],
        "ungated_status": [x.status for x in ub.manifest.artifacts],
        "gated_onnx_bytes": sum(x.bytes for x in gb.manifest.artifacts if x.target == "onnx"),
        "ungated_onnx_bytes": sum(x.bytes for x in ub.manifest.artifacts if x.target == "onnx")}
    print("exported", res["export"]["seconds"], flush=True)
    res["parity"] = {be: parity(gb, m, data["test"], be) for be in ("onnxruntime", "openvino")}
    print("parity", res["parity"], flush=True)
    res["robustness"] = robustness(gb)
    from edgekit.compress.token_gating_onegraph import export_onegraph
    one = str(export_onegraph(m, work / "onegraph.onnx"))
    res["onegraph_parity"] = onegraph_parity(one, m, data["test"])
    res["latency"] = latency(gb, ub, m, base, data["test"], a.lat_n, a.lat_batches, onegraph=one)
    print("latency", json.dumps(res["latency"], indent=1), flush=True)
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
