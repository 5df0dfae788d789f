"""PPP benchmark on Fashion-MNIST users (random subsets of 2-4 classes).

    python benchmarks/ppp_fashion.py [--users 16] [--quick]
Writes benchmarks/results/ppp_fashion.json and .png. Uses the committed gated weights
(edgekit/ppp/weights/ppp_fashion.safetensors; scripts/train_ppp.py fashion reproduces them).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--eval-cap", type=int, default=600, help="max eval samples per user")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from edgekit.ppp import bench as B, personalize as ppp
    from edgekit.data import fashion_mnist as fm

    gated, meta = ppp.load_checkpoint(ROOT / "edgekit/ppp/weights/ppp_fashion.safetensors")
    xt, yt = fm.load("test")
    rng = np.random.default_rng(a.seed)
    users = []
    for i in range(4 if a.quick else a.users):
        classes = sorted(rng.choice(10, size=int(rng.integers(2, 5)), replace=False).tolist())
        idx = rng.permutation(np.flatnonzero(np.isin(yt, classes)))
        users.append({"name": f"user{i}:" + ",".join(fm.LABELS[c] for c in classes), "classes": classes,
                      "personal": xt[idx[:32]], "x": xt[idx[32:32 + a.eval_cap]], "y": yt[idx[32:32 + a.eval_cap]]})
    rows = B.run_users(gated, users)
    cst = B.costs(gated)
    summary = B.summarize(rows, cst)
    summary["unpruned_flops"] = cst["unpruned"]["flops"]
    print("ONNX side by side (torch-free pruning of the exported gated bundle)")
    onnx_res = B.onnx_side_by_side(gated, meta, users[0]["personal"])
    result = {"benchmark": "ppp_fashion", "env": B.environment(a.seed), "model": "ppp_fashion.safetensors",
              "model_test_acc_all_classes": meta.get("test_acc"), "flops_unit": "MACs per sample",
              "costs": {str(k): v for k, v in cst.items()}, "summary": summary, "onnx": onnx_res, "users": rows}
    out = ROOT / "benchmarks/results" / ("ppp_fashion_quick" if a.quick else "ppp_fashion")
    B.write(result, out.with_suffix(".json"))
    B.plot(summary, out.with_suffix(".png"), "PPP on Fashion-MNIST users (2-4 classes)")
    print(out.with_suffix(".json"))


if __name__ == "__main__":
    main()
