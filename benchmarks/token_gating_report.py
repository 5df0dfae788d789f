"""Markdown tables from benchmarks/results/token_gating.json (for docs/token_gating.md and the README).

  python benchmarks/token_gating_report.py [path/to/token_gating.json]
Prints the accuracy/FLOPs table, the latency table, parity and the must-show verdicts; every number
is read from the JSON written by benchmarks/token_gating.py.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def main(path: str | None = None) -> str:
    r = json.loads(Path(path or ROOT / "benchmarks/results/token_gating.json").read_text())
    u = r["ungated"]
    op = r["operating_point"]["checkpoint"]
    sweep = r["monotone_dev"]["recipe"]
    lines = []
    add = lines.append
    add(f"Knob sweep recipe (unless noted): {sweep}.")
    add("")
    add("| model | knob | dev acc % | test acc % | test MFLOPs/ex | FLOPs ÷ (vs ungated) | avg tokens per layer, test (L0..L5) "
        "| first-k @ same FLOPs | top-k attention, every layer @ same FLOPs | top-k attention, once @ same FLOPs "
        "| attention threshold @ same FLOPs |")
    add("|---|---|---|---|---|---|---|---|---|---|---|")
    tpl = ", ".join(f"{t:.1f}" for t in u["test"]["tokens_per_layer"])
    add(f"| ungated fine-tuned | – | {pct(u['dev']['accuracy'])} | {pct(u['test']['accuracy'])} | "
        f"{u['test']['flops_plain_last_layer'] / 1e6:.0f} | 1.00 | {tpl} | | | | |")
    add(f"| ungated + [CLS]-only last layer (exact, reference) | – | {pct(u['dev']['accuracy'])} | "
        f"{pct(u['test']['accuracy'])} | {u['test']['flops'] / 1e6:.0f} | "
        f"{r['ungated_cls_last_row']['test_flops_reduction']:.2f} | {tpl} | | | | |")
    c = r.get("ungated_more_control")
    if c:
        add(f"| ungated, trained {c['steps_after_ungated']} more steps (training-budget control) | – | "
            f"{pct(c['dev']['accuracy'])} | {pct(c['test']['accuracy'])} | {c['test']['flops_plain_last_layer'] / 1e6:.0f} "
            f"| 1.00 | | | | | |")
    for g in sorted(r["gated"], key=lambda g: g["knob"]):
        mb = g["test_matched_baselines"]

        def cell(k: str) -> str:
            if k not in mb:
                return "–"
            return pct(mb[k]["accuracy"]) + ("" if mb[k]["inside_measured_range"] else " (out of range)")
        name = "**gated (operating point)**" if g["checkpoint"] == op else "gated"
        if g["recipe"] != sweep:
            name += f" ({g['recipe']})"
        add(f"| {name} | {g['knob']:g} | {pct(g['dev']['accuracy'])} | {pct(g['test']['accuracy'])} | "
            f"{g['test']['flops'] / 1e6:.0f} | {g['test_flops_reduction']:.2f} | "
            + ", ".join(f"{t:.1f}" for t in g["test"]["tokens_per_layer"])
            + f" | {cell('first_k')} | {cell('topk_attention')} | {cell('topk_attention_once')} | "
            f"{cell('threshold_attention')} |")
    tf = r.get("topk_finetuned")
    if tf:
        add(f"| top-k attention, fixed schedule r = {', '.join(f'{x:g}' for x in tf['ratios'])} (no learned gates), "
            f"+ the same {tf['hard_steps']}-step frozen-gate fine-tune, KD {tf['kd']:g} (fair-budget baseline) | – | "
            f"{pct(tf['dev']['accuracy'])} | {pct(tf['test']['accuracy'])} | {tf['test']['flops'] / 1e6:.0f} | "
            f"{tf['test_flops_reduction']:.2f} | " + ", ".join(f"{t:.1f}" for t in tf["test"]["tokens_per_layer"])
            + " | | | | |")
    add("")
    lat = r["latency"]
    rows = [("ort_ungated", "ORT ungated, (ids, mask) graph as `edgekit export` writes it"),
            ("ort_ungated_b1graph", "ORT ungated, batch-1 graph (same exporter + layer code as the gated one-graph)"),
            ("ort_ungated_cls_last", "ORT ungated + [CLS]-only last layer (reference)"),
            ("ort_ungated_b1graph_cls_last", "ORT ungated batch-1 graph + [CLS]-only last layer (reference)"),
            ("ort_gated", "**ORT gated bundle** (batch 1: one-graph `single`; batch > 1: layer pipeline)"),
            ("ort_gated_layer_pipeline", "ORT gated, layer pipeline forced (`single=False`)"),
            ("ort_pipeline_all_open", "ORT layer pipeline, all gates open (pipeline overhead)"),
            ("torch_ungated", "PyTorch ungated"), ("torch_gated", "PyTorch gated (hard, tokens gathered out)")]
    add("| | batch 1 mean (median) ms | batch 32 mean (median) ms |")
    add("|---|---|---|")
    for k, label in rows:
        cells = []
        for b in ("batch1", "batch32"):
            s = lat[b].get(k)
            cells.append(f"{s['mean_ms']:.2f} ({s['median_ms']:.2f})" if s else "–")
        add(f"| {label} | {cells[0]} | {cells[1]} |")
    b1, b32 = lat["batch1"], lat["batch32"]
    add(f"| **speed-up ORT, gated vs fastest ungated** | **{b1['speedup_ort_mean']:.2f}×** (median "
        f"{b1['speedup_ort_median']:.2f}×) | **{b32['speedup_ort_mean']:.2f}×** (median {b32['speedup_ort_median']:.2f}×) |")
    add(f"| speed-up ORT vs ungated + [CLS]-only last layer | {b1['speedup_ort_mean_vs_ungated_cls_last']:.2f}× | "
        f"{b32['speedup_ort_mean_vs_ungated_cls_last']:.2f}× |")
    add(f"| speed-up ORT, layer pipeline forced | {b1['speedup_ort_layer_pipeline_mean']:.2f}× | "
        f"{b32['speedup_ort_layer_pipeline_mean']:.2f}× |")
    add(f"| speed-up PyTorch | {b1['speedup_torch_mean']:.2f}× | {b32['speedup_torch_mean']:.2f}× |")
    for k, knob in lat.get("extra_points", {}).items():
        g2 = next(x for x in r["gated"] if x["checkpoint"] == k + ".pt")
        add(f"| other sweep point `{k}` (knob {knob:g}, {g2['test_flops_reduction']:.2f}× fewer FLOPs, test "
            f"{pct(g2['test']['accuracy'])} %): ORT ms / speed-up | {b1['ort_gated_' + k]['mean_ms']:.2f} / "
            f"{b1['speedup_ort_mean_' + k]:.2f}× | {b32['ort_gated_' + k]['mean_ms']:.2f} / {b32['speedup_ort_mean_' + k]:.2f}× |")
    add("")
    add(f"Fastest ungated ORT reference: batch 1 `{b1['fastest_ort_ungated']}`, batch 32 `{b32['fastest_ort_ungated']}`; "
        f"{b1['timed_calls']} batch-1 calls and {b32['timed_calls']} batches of 32 per configuration.")
    add("")
    if r.get("matmul_scaling"):
        ms = r["matmul_scaling"]
        add("ORT time of the encoder's 36 weight matmuls alone vs token rows M (1 thread, this CPU): "
            + ", ".join(f"M={x['rows']}: {x['ms']:.2f} ms ({x['gflops_per_s']:.0f} GFLOP/s)" for x in ms) + ".")
        add("")
    add("| parity vs PyTorch hard gating (all test reviews) | path | same kept tokens, every layer | max abs logit err "
        "(where tokens equal) | top-1 agreement |")
    add("|---|---|---|---|---|")
    for k, p in r["parity"].items():
        add(f"| {k} | {p['path']} | {p['examples'] - p['examples_with_different_kept_tokens']} / {p['examples']} | "
            f"{p['max_abs_logit_err']:.1e} ({p['max_abs_logit_err_where_kept_tokens_equal']:.1e}) | "
            f"{100 * p['top1_agreement']:.2f} % |")
    add("")
    g = next(x for x in r["gated"] if x["checkpoint"] == op)
    mb = g["test_matched_baselines"]
    best = {k: v["accuracy"] for k, v in mb.items() if k in ("first_k", "topk_attention", "topk_attention_once")}
    add(f"Operating point `{op}`, knob {g['knob']:g}, {g['recipe']} (rule: {r['operating_point']['rule']}; chosen on {r['operating_point']['chosen_on']}): "
        f"{g['test_flops_reduction']:.2f}× fewer test FLOPs than ungated ({g['test_flops_reduction_vs_ungated_cls_last']:.2f}× "
        f"vs ungated + [CLS]-only last layer), test {pct(g['test']['accuracy'])} % vs ungated {pct(u['test']['accuracy'])} % "
        f"(Δ {100 * (g['test']['accuracy'] - u['test']['accuracy']):+.2f} pt); matched baselines: "
        + ", ".join(f"{k} {pct(v)} %" for k, v in best.items()) + ".")
    m = r["monotone_dev"]
    add(f"Knob monotone on dev ({m['recipe']}; knobs {m['knobs']}): FLOPs non-increasing {m['flops_nonincreasing']}, "
        f"accuracy non-increasing {m['accuracy_nonincreasing']}.")
    out = "\n".join(lines)
    print(out)
    return out


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
