"""`edgekit eval BUNDLE --data labeled.npz|DIR`: accuracy of every artifact against the labels and the
PyTorch reference, in one table (torch-free)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgekit.cli import output as cli


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_bundle)


def eval_bundle(
    bundle: Path = typer.Argument(..., help="NAME.edgekit directory"),
    data: Path = typer.Option(..., "--data", "-d", help=".npz (one array per input + labels [+ reference]) or a "
                              "directory of images in one sub-directory per class"),
    target: Optional[str] = typer.Option(None, "--target", "-t", help="only these targets (comma list)"),
    graph: str = typer.Option("main", "--graph", help="graph to evaluate"),
    batch: int = typer.Option(32, "--batch", help="samples per call (for graphs with a dynamic batch axis)"),
    json_out: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Accuracy of every artifact runnable here on labeled data, and its agreement with PyTorch's outputs."""
    from edgekit.api import evaluate
    from edgekit.core.errors import UsageError

    if batch < 1:
        raise UsageError(f"--batch {batch}: a batch needs at least one sample", "use --batch 1 or more")
    with cli.status("evaluating", quiet=json_out) as st:
        res = evaluate(bundle, data, graph=graph, batch=batch, targets=target.split(",") if target else None,
                       progress=st.update)
    if json_out:
        cli.emit_json(res)
        return
    rows = [[r["target"], r["precision"], r.get("backend", "-"), r["status"], cli.fmt(r.get("accuracy"), ".4f"),
             cli.fmt(r.get("top5_accuracy"), ".4f"), cli.fmt(r.get("top1_agreement"), ".4f"),
             cli.fmt(r.get("top5_contains"), ".4f"), cli.fmt(r.get("sqnr_db"), ".1f"), cli.fmt(r.get("cos_min"), ".4f"),
             r.get("skipped", "")] for r in res["artifacts"]]
    cli.table(f"{Path(res['bundle']).name}: {res['samples']} samples" + ("" if res["labels"] else " (no labels)"),
              ["target", "precision", "backend", "status", "accuracy", "top-5 acc", "top-1 = ref", "ref in top-5",
               "SQNR dB", "min cos", "note"], rows)
    cli.say(f"reference: {res['reference']}")
