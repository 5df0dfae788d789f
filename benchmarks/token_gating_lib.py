"""Pieces of benchmarks/token_gating.py: baselines, parity, robustness, latency, plot."""
from __future__ import annotations

import time

import numpy as np

FIRST_K = [4, 6, 8, 10, 12, 14, 16, 20, 24, 32, 40, 48, 64]
RATIOS = [0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
RATIOS_ONCE = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
THRESHOLDS = [0.25, 0.5, 0.75, 1.0, 1.25, 1.5]


def baseline_curves(base, test, T) -> dict:
    """Accuracy/FLOPs curves of the ungated fine-tuned model with fixed (unlearned) token rules.
    Every baseline runs with the same [CLS]-only last layer as the gated model (base.cls_last)."""
    seqs, y = test
    out = {"first_k": [], "topk_attention": [], "topk_attention_once": [], "threshold_attention": []}
    for k in FIRST_K:
        out["first_k"].append({"param": k, **T.evaluate(base, T.first_k_truncate(seqs, k), y, rules={})})
    for r in RATIOS:
        out["topk_attention"].append({"param": r, **T.evaluate(base, seqs, y, rules=T.uniform_rules(base, "ratio", r))})
    for r in RATIOS_ONCE:   # top-k by attention once, before layer 1 (no further pruning)
        out["topk_attention_once"].append({"param": r, **T.evaluate(base, seqs, y, rules={
            1: {"kind": "ratio", "layer": 1, "ratio": r}})})
    for t in THRESHOLDS:
        out["threshold_attention"].append({"param": t, **T.evaluate(base, seqs, y,
                                                                   rules=T.uniform_rules(base, "threshold", t))})
    return out


def matched(curves: dict, flops: float) -> dict:
    """Baseline accuracy interpolated at the given FLOPs (linear in FLOPs between measured points)."""
    res = {}
    for name, pts in curves.items():
        pts = sorted(pts, key=lambda p: p["flops"])
        f = np.array([p["flops"] for p in pts])
        acc = np.array([p["accuracy"] for p in pts])
        inside = bool(f[0] <= flops <= f[-1])
        res[name] = {"accuracy": float(np.interp(flops, f, acc)), "inside_measured_range": inside}
    return res


def parity(bundle, model, test, backend: str, batch: int = 32) -> dict:
    """Pipeline on `backend` vs PyTorch hard-gated model: kept tokens and logits, whole test set."""
    import edgekit
    from edgekit.tokengate.train import pad_batch

    p = edgekit.load(bundle.root, backend=backend)
    seqs, _ = test
    path = "single graph" if batch == 1 and p.single else "layer pipeline"
    max_err, max_err_same, same_kept, agree, n = 0.0, 0.0, 0, 0, 0
    for i in range(0, len(seqs), batch):
        ids, mask = pad_batch(seqs[i:i + batch])
        ref = model.run_hard(ids, mask)
        got = p.run({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        r, g = ref["logits"].numpy(), got["logits"]
        max_err = max(max_err, float(np.abs(r - g).max()))
        ok = np.ones(ids.shape[0], dtype=bool)
        for a, b in zip(p.last_kept, ref["kept_positions"]):
            if a.shape != b.shape:
                ok[:] = False
                break
            ok &= (np.sort(a, 1) == np.sort(b, 1)).all(1)
        same_kept += int(ok.sum())
        if ok.any():
            max_err_same = max(max_err_same, float(np.abs(r - g)[ok].max()))
        agree += int((r.argmax(1) == g.argmax(1)).sum())
        n += ids.shape[0]
    return {"examples": n, "max_abs_logit_err": max_err, "same_kept_tokens": same_kept / n,
            "examples_with_different_kept_tokens": n - same_kept,
            "max_abs_logit_err_where_kept_tokens_equal": max_err_same,
            "top1_agreement": agree / n, "backend": p.backend_name, "batch": batch, "path": path}


def robustness(bundle) -> dict:
    import edgekit
    from edgekit.core.errors import InputError

    p = edgekit.load(bundle.root, backend="onnxruntime")
    cases = {"empty": "", "over_long": "great fun " * 400, "unknown_chars": "😀🤖 \u200b \x00 ñ 日本語 ␀ ‽",
             "whitespace": "   \n\t ", "normal": "a gripping, beautifully acted film"}
    out = {}
    for k, t in cases.items():
        r = p.classify([t])[0]
        out[k] = {"label": r["label"], "tokens_per_layer": r["tokens_per_layer"]}
    batch = list(cases.values())
    together = p.run_text(batch)["logits"]
    alone = np.concatenate([p.run_text([t])["logits"] for t in batch])
    out["mixed_batch_vs_alone_max_abs_err"] = float(np.abs(together - alone).max())
    try:
        p.run_text([3])
        out["non_string"] = "no error (BAD)"
    except InputError as e:
        out["non_string"] = f"InputError: {e}"
    return out


def _time(fn, reps: int = 1) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def latency(gb, ub: dict, m, base, test, n: int, n_batches: int, extra: dict | None = None) -> dict:
    """Interleaved timing of gated vs ungated (ORT and PyTorch eager), batch 1 and 32, 1 thread.
    ``ub``: ungated bundles {"plain": (ids, mask) graph as exported by edgekit, "cls_last": same with
    the [CLS]-only last layer, "b1"/"b1_cls_last": batch-1 graphs (input_ids only) with the exporter
    and layer code of the gated bundle's batch-1 graph}. ``extra``: {name: gated bundle} of other
    sweep points, timed in the same rounds as ``ort_gated_<name>``. All ORT sessions: edgekit's ORT
    runtime, ORT_ENABLE_ALL, 1 intra-op thread."""
    import torch

    import edgekit
    from edgekit.tokengate.export import UngatedGraph
    from edgekit.tokengate.train import pad_batch

    gp = edgekit.load(gb.root, backend="onnxruntime", threads=1)
    gp_pipe = edgekit.load(gb.root, backend="onnxruntime", threads=1, single=False)
    gp_open = edgekit.load(gb.root, backend="onnxruntime", threads=1, rule_override=[])
    us = {k: edgekit.load(b.root, backend="onnxruntime", threads=1) for k, b in ub.items()}
    ung = UngatedGraph(base).eval()
    xp = {k: edgekit.load(b.root, backend="onnxruntime", threads=1) for k, b in (extra or {}).items()}
    seqs, _ = test

    def configs(ids, mask):
        fi = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
        c = {"ort_ungated": lambda: us["plain"].run_raw(fi),
             "ort_ungated_cls_last": lambda: us["cls_last"].run_raw(fi),
             "ort_gated": lambda: gp.run(fi), "ort_gated_layer_pipeline": lambda: gp_pipe.run(fi),
             "ort_pipeline_all_open": lambda: gp_open.run(fi),
             "torch_ungated": lambda: ung(ids, mask), "torch_gated": lambda: m.run_hard(ids, mask)}
        for k, p in xp.items():
            c[f"ort_gated_{k}"] = (lambda p=p: p.run(fi))
        if ids.shape[0] == 1:
            f1 = {"input_ids": fi["input_ids"]}
            c["ort_ungated_b1graph"] = lambda: us["b1"].run_raw(f1)
            c["ort_ungated_b1graph_cls_last"] = lambda: us["b1_cls_last"].run_raw(f1)
        return c

    out = {}
    with torch.inference_mode():
        for bs, count in ((1, n), (32, n_batches)):
            times: dict[str, list[float]] = {}
            rng = np.random.default_rng(0)
            for j in range(count + 2):
                idx = rng.choice(len(seqs), size=bs, replace=False)
                ids, mask = pad_batch([seqs[i] for i in idx])
                cs = configs(ids, mask)
                names = list(cs)
                rng.shuffle(names)      # interleaved, random order each round
                for k in names:
                    t = _time(cs[k])
                    if j >= 2:  # first two rounds = warm-up
                        times.setdefault(k, []).append(t)
            stats = {k: {"mean_ms": 1e3 * float(np.mean(v)), "median_ms": 1e3 * float(np.median(v))}
                     for k, v in times.items()}
            ung_keys = [k for k in stats if k.startswith("ort_ungated") and "cls_last" not in k]
            best = min(ung_keys, key=lambda k: stats[k]["mean_ms"])   # never handicap the reference
            stats["fastest_ort_ungated"] = best
            stats["speedup_ort_mean"] = stats[best]["mean_ms"] / stats["ort_gated"]["mean_ms"]
            stats["speedup_ort_median"] = stats[best]["median_ms"] / stats["ort_gated"]["median_ms"]
            cls_keys = [k for k in stats if k.startswith("ort_ungated") and k.endswith("cls_last")]
            best_cls = min(cls_keys, key=lambda k: stats[k]["mean_ms"])
            stats["speedup_ort_mean_vs_ungated_cls_last"] = stats[best_cls]["mean_ms"] / stats["ort_gated"]["mean_ms"]
            stats["speedup_ort_layer_pipeline_mean"] = stats[best]["mean_ms"] / stats["ort_gated_layer_pipeline"]["mean_ms"]
            stats["speedup_torch_mean"] = stats["torch_ungated"]["mean_ms"] / stats["torch_gated"]["mean_ms"]
            stats["multigraph_overhead_ort_mean"] = (stats["ort_pipeline_all_open"]["mean_ms"]
                                                     / stats["ort_ungated_cls_last"]["mean_ms"])
            for k in xp:
                stats[f"speedup_ort_mean_{k}"] = stats[best]["mean_ms"] / stats[f"ort_gated_{k}"]["mean_ms"]
            stats["timed_calls"] = count
            out[f"batch{bs}"] = stats
    return out


def plot(res: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.8))
    names = {"first_k": "static first-k truncation", "topk_attention": "top-k by attention, every layer (no learned gates)",
             "topk_attention_once": "top-k by attention, once before layer 1",
             "threshold_attention": "attention threshold (LTP-style, untrained)"}
    for k, pts in res["baselines"].items():
        pts = sorted(pts, key=lambda p: p["flops"])
        ax.plot([p["flops"] / 1e6 for p in pts], [100 * p["accuracy"] for p in pts], "o--", ms=3, label=names[k])
    main = res["monotone_dev"]["recipe"]
    recipes = [main] + sorted({r["recipe"] for r in res["gated"]} - {main})
    for j, rec in enumerate(recipes):    # one line per training recipe
        g = sorted([r for r in res["gated"] if r["recipe"] == rec], key=lambda r: r["test"]["flops"])
        ax.plot([r["test"]["flops"] / 1e6 for r in g], [100 * r["test"]["accuracy"] for r in g],
                "s-" if j == 0 else ("s:", "^:", "v:")[(j - 1) % 3], c="k" if j == 0 else ("0.55", "tab:brown", "tab:olive")[(j - 1) % 3],
                ms=6 if j == 0 else 5,
                label="learned token gates (knob sweep)" if j == 0 else
                "learned gates, " + ("earlier recipe (sparsity flops)" if "sparsity flops" in rec
                                     else rec.split(", ")[0]))
        for r in g:
            ax.annotate(f"{r['knob']:g}", (r["test"]["flops"] / 1e6, 100 * r["test"]["accuracy"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points", color="k" if j == 0 else "0.45")
    tf = res.get("topk_finetuned")
    if tf:
        ax.plot([tf["test"]["flops"] / 1e6], [100 * tf["test"]["accuracy"]], "D", ms=7, c="tab:purple",
                label="fixed top-k schedule + same fine-tune (fair-budget baseline)")
    u = res["ungated"]["test"]
    ax.plot([u["flops_plain_last_layer"] / 1e6], [100 * u["accuracy"]], "*", ms=12, c="r", label="ungated fine-tuned")
    ax.plot([u["flops"] / 1e6], [100 * u["accuracy"]], "*", ms=9, c="orange",
            label="ungated + [CLS]-only last layer (exact)")
    ax.axhline(100 * u["accuracy"] - 1, c="r", lw=0.6, ls=":")
    ax.axvline(u["flops_plain_last_layer"] / 2e6, c="gray", lw=0.6, ls=":")
    ax.set_xlabel("FLOPs per example (M, counted; [CLS]-only last layer except the red star)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("MiniLM-L6, rotten tomatoes (test)")
    ax.legend(fontsize=6, loc="lower right")
    ks = sorted([r for r in res["gated"] if r["recipe"] == res["monotone_dev"]["recipe"]], key=lambda r: r["knob"])
    bx.plot([r["knob"] for r in ks], [100 * r["dev"]["accuracy"] for r in ks], "o-", c="k", label="dev accuracy")
    bx.set_xlabel("knob")
    bx.set_ylabel("dev accuracy (%)")
    bx.set_xscale("log")
    bx.set_xticks([r["knob"] for r in ks], [f"{r['knob']:g}" for r in ks])
    bx.minorticks_off()
    b2 = bx.twinx()
    b2.plot([r["knob"] for r in ks], [r["dev"]["flops"] / 1e6 for r in ks], "s--", c="tab:blue", label="dev FLOPs")
    b2.set_ylabel("dev FLOPs per example (M)", color="tab:blue")
    bx.set_title("knob trade-off on dev (main recipe, left: black)", fontsize=9)
    fig.tight_layout()
    tmp = str(path) + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    import os
    os.replace(tmp, path)


def matmul_scaling(hidden: int = 384, inter: int = 1536, layers: int = 6,
                   rows=(1, 2, 5, 10, 14, 20, 27, 40, 64), reps: int = 200) -> list[dict]:
    """ORT (1 thread) time of the encoder's weight matmuls alone (per layer Q, K, V, O, FFN-in,
    FFN-out with random fp32 weights) vs the number of token rows M: shows how far batch-1 time is
    from proportional to tokens on this CPU."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, outs, cur = [], [], [], "x"
    shapes = [(hidden, hidden)] * 4 + [(hidden, inter), (inter, hidden)]
    for li in range(layers):
        for j, (a, b) in enumerate(shapes):
            w = f"w{li}_{j}"
            inits.append(numpy_helper.from_array((rng.standard_normal((a, b)) * 0.02).astype(np.float32), w))
            o = f"o{li}_{j}"
            nodes.append(helper.make_node("MatMul", [cur, w], [o]))
            if j < 2:   # Q, K: side outputs; V -> O -> FFN chain
                outs.append(helper.make_tensor_value_info(o, TensorProto.FLOAT, None))
            else:
                cur = o
    g = helper.make_graph(nodes, "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", hidden])],
                          [helper.make_tensor_value_info(cur, TensorProto.FLOAT, ["M", hidden])] + outs,
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    res = []
    for M in rows:
        x = rng.standard_normal((M, hidden)).astype(np.float32)
        for _ in range(20):
            s.run(None, {"x": x})
        t = time.perf_counter()
        for _ in range(reps):
            s.run(None, {"x": x})
        dt = (time.perf_counter() - t) / reps
        fl = 2 * M * layers * (4 * hidden * hidden + 2 * hidden * inter)
        res.append({"rows": M, "ms": 1e3 * dt, "gflops_per_s": fl / dt / 1e9})
    return res
