"""CLI: `edgekit ppp train ...` and `edgekit personalize SRC --data personal.npz --out DIR`.

Import is light: torch / onnx are imported inside the command functions. ``personalize`` on a
bundle directory takes the torch-free path (edgekit.runtimes.pipelines.ppp); on a checkpoint
(.safetensors) or ``builtin:ppp-fashion`` / ``builtin:ppp-kws`` it takes the PyTorch path.
"""
from __future__ import annotations

import json

from edgekit.core.errors import UsageError
from edgekit.ppp.tasks import TASKS, personalize_any, resolve_checkpoint, train_builtin


def register(app) -> None:
    import typer

    ppp_app = typer.Typer(help="PPP: prototype-based personalized pruning (gated training).", no_args_is_help=True)

    @ppp_app.command("train")
    def train_cmd(task: str = typer.Argument(..., help="fashion | kws | digits"),
                  epochs: int = typer.Option(None, help="epochs (default: the built-in recipe)"),
                  seed: int = typer.Option(0), out: str = typer.Option(None, help="output .safetensors"),
                  as_json: bool = typer.Option(False, "--json")):
        """Train a gated (dynamic path) network on a built-in data set."""
        if task not in TASKS:
            raise UsageError(f"unknown PPP task {task!r}", f"use one of {', '.join(TASKS)}")
        path = train_builtin(task, epochs=epochs, seed=seed, out=out, log=(lambda *_: None) if as_json else print)
        typer.echo(json.dumps({"checkpoint": str(path)}) if as_json else f"wrote {path}")

    @ppp_app.command("export")
    def export_cmd(src: str = typer.Argument(..., help="checkpoint .safetensors or builtin:ppp-fashion"),
                   out: str = typer.Option(".", help="output directory"),
                   as_json: bool = typer.Option(False, "--json")):
        """Export the gated model as a bundle that `edgekit personalize` can prune without PyTorch."""
        from edgekit.ppp.export import export_gated_checkpoint

        b = export_gated_checkpoint(resolve_checkpoint(src), out)
        typer.echo(json.dumps({"bundle": str(b.root)}) if as_json else f"wrote {b.root}")

    app.add_typer(ppp_app, name="ppp")

    @app.command("personalize")
    def personalize_cmd(src: str = typer.Argument(..., help="gated bundle dir, PPP checkpoint, or builtin:ppp-*"),
                        data: str = typer.Option(..., "--data", help="personal samples .npz (no labels)"),
                        out: str = typer.Option(..., "--out", help="output directory"),
                        keep_ratio: float = typer.Option(None, "--keep-ratio", help="fraction of channels kept per layer"),
                        threshold: float = typer.Option(0.5, help="prototype threshold when no --keep-ratio"),
                        name: str = typer.Option(None, help="bundle name"),
                        openvino: bool = typer.Option(None, "--openvino/--no-openvino",
                                                      help="also write OpenVINO IR (bundle input; default: if the bundle has one)"),
                        as_json: bool = typer.Option(False, "--json")):
        """PPP: prune a gated model to a small personal model from a few unlabeled samples."""
        info = personalize_any(src, data, out, keep_ratio=keep_ratio, threshold=threshold, name=name, openvino=openvino)
        if as_json:
            typer.echo(json.dumps(info))
        else:
            typer.echo(f"wrote {info['bundle']}  FLOPs {info['flops_before']} -> {info['flops_after']}  "
                       f"params {info['params_before']} -> {info['params_after']}  "
                       f"({info['prototype_size']} samples, {info['seconds']:.3f} s)")
