"""PPP benchmark on synthetic keyword spotting: users = random 2-4 keyword subsets, and single
test voices (voices never seen in training; all 10 keywords).

    python scripts/make_kws.py            # features (once, ~1-2 min)
    python benchmarks/ppp_kws.py [--quick]
Writes benchmarks/results/ppp_kws.json and .png.
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
    ap.add_argument("--users", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from edgekit.ppp import bench as B, personalize as ppp
    from edgekit.ppp import kws

    gated, meta = ppp.load_checkpoint(ROOT / "edgekit/ppp/weights/ppp_kws.safetensors")
    _, _, xt, yt, _, _, vt = kws.load(with_voices=True)
    rng = np.random.default_rng(a.seed)
    users = []
    for i in range(3 if a.quick else a.users):
        classes = sorted(rng.choice(10, size=int(rng.integers(2, 5)), replace=False).tolist())
        idx = rng.permutation(np.flatnonzero(np.isin(yt, classes)))
        users.append({"name": f"keywords{i}:" + ",".join(kws.KEYWORDS[c] for c in classes), "kind": "keywords",
                      "personal": xt[idx[:32]], "x": xt[idx[32:]], "y": yt[idx[32:]]})
    for v in sorted(set(vt.tolist()))[: 2 if a.quick else None]:
        idx = rng.permutation(np.flatnonzero(vt == v))
        users.append({"name": f"voice:{v}", "kind": "voice", "personal": xt[idx[:32]], "x": xt[idx[32:]],
                      "y": yt[idx[32:]]})
    rows = B.run_users(gated, users)
    cst = B.costs(gated)
    result = {"benchmark": "ppp_kws", "env": B.environment(a.seed), "model": "ppp_kws.safetensors",
              "model_test_acc_all_classes": meta.get("test_acc"), "flops_unit": "MACs per sample",
              "costs": {str(k): v for k, v in cst.items()}, "users": rows, "summary": {}}
    for kind in ("keywords", "voice"):
        sel = [r for r, u in zip(rows, users) if u["kind"] == kind]
        s = B.summarize(sel, cst)
        s["unpruned_flops"] = cst["unpruned"]["flops"]
        result["summary"][kind] = s
    print("ONNX side by side (torch-free pruning of the exported gated bundle)")
    result["onnx"] = B.onnx_side_by_side(gated, meta, users[0]["personal"])
    out = ROOT / "benchmarks/results" / ("ppp_kws_quick" if a.quick else "ppp_kws")
    B.write(result, out.with_suffix(".json"))
    B.plot(result["summary"]["keywords"], out.with_suffix(".png"), "PPP on keyword spotting (2-4 keyword users)")
    B.plot(result["summary"]["voice"], out.with_name(out.name + "_voices.png"), "PPP on keyword spotting (single-voice users)")
    print(out.with_suffix(".json"))


if __name__ == "__main__":
    main()
