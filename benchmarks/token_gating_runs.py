"""Collect extra token-gating training runs (seeds, another ungated start) into one JSON.

Each run is a ``scripts/train_tokengate.py ... --eval-test`` summary (``CACHE/NAME.json``); this
script reads them, adds the FLOPs reduction against the ungated model's plain FLOPs on the same
split, and writes ``benchmarks/results/token_gating_runs.json``. It trains nothing.

  EDGEKIT_TOKENGATE_CACHE=DIR python benchmarks/token_gating_runs.py gated_k2.85_long gated_k2.85_long_s2 ...
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

CACHE = Path(os.environ.get("EDGEKIT_TOKENGATE_CACHE", "/tmp/edgekit_tokengate"))
OUT = Path(__file__).parent / "results" / "token_gating_runs.json"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="run names (CACHE/NAME.json), e.g. gated_k2.85_long_s2")
    ap.add_argument("--ungated", default="ungated,ungated_more",
                    help="ungated reference runs (CACHE/NAME.json), reported beside the gated runs")
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args(argv)

    def load(name: str) -> dict:
        p = CACHE / f"{name}.json"
        if not p.exists():
            raise SystemExit(f"missing {p}: run scripts/train_tokengate.py with --eval-test first")
        return json.loads(p.read_text())

    refs = {name: load(name) for name in a.ungated.split(",")}
    # FLOPs depend only on the token counts, so any ungated run of the same split is the reference
    ref = next((r for r in refs.values() if "flops_plain_last_layer" in r["dev"]), None)
    if ref is None:
        raise SystemExit("no ungated run with flops_plain_last_layer: re-run it with the current script")
    rows = []
    for name in a.runs:
        r = load(name)
        row = {"run": name, "base": r.get("base") or "ungated.pt", "knob": r.get("knob"), "seed": r.get("seed"),
               "recipe": r.get("recipe"), "train_seconds": round(r.get("train_seconds", 0.0))}
        for split in ("dev", "test"):
            if split in r:
                s, u = r[split], ref[split]
                row[split] = {"accuracy": s["accuracy"], "tokens_per_layer": [round(t, 2) for t in s["tokens_per_layer"]],
                              "mflops": s["flops"] / 1e6,
                              "flops_reduction": u["flops_plain_last_layer"] / s["flops"]}
        rows.append(row)
    out = {"what": "extra token-gating training runs (scripts/train_tokengate.py --eval-test summaries); "
                   "flops_reduction = ungated plain FLOPs / gated FLOPs on the same split",
           "ungated": {k: {s: v[s]["accuracy"] for s in ("dev", "test") if s in v} for k, v in refs.items()},
           "runs": rows}
    Path(a.out).write_text(json.dumps(out, indent=1))
    for row in rows:
        print(f"{row['run']:28s} base={row['base']:16s} knob={row['knob']} seed={row['seed']}  " +
              "  ".join(f"{s} {row[s]['accuracy'] * 100:.2f}% @ {row[s]['flops_reduction']:.2f}x"
                        for s in ("dev", "test") if s in row))
    return out


if __name__ == "__main__":
    main()
