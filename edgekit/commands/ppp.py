"""CLI: `edgekit ppp train ...` and `edgekit personalize SRC --data personal.npz --out DIR`.

Import is light: torch / onnx are imported inside the command functions. ``personalize`` on a
bundle directory takes the torch-free path (edgekit.compress.ppp_onnx); on a checkpoint
(.safetensors) or ``builtin:ppp-fashion`` / ``builtin:ppp-kws`` it takes the PyTorch path.
"""
from __future__ import annotations

import json
from pathlib import Path

from edgekit.errors import UsageError

WEIGHTS = Path(__file__).resolve().parents[1] / "models" / "weights"
TASKS = {"fashion": {"cfg": "fashion", "epochs": 6, "file": "ppp_fashion.safetensors"},
         "digits": {"cfg": "tiny", "epochs": 30, "file": "ppp_digits.safetensors", "kw": {"lr": 1e-2}},
         "kws": {"cfg": "kws", "epochs": 30, "file": "ppp_kws.safetensors",
                 "kw": {"augment": "specaug", "weight_decay": 5e-2}}}


def task_data(task: str):
    """(x_train, y_train, x_test, y_test, meta) for a built-in PPP task."""
    if task == "fashion":
        from edgekit.data import fashion_mnist as fm

        x, y = fm.load("train")
        xt, yt = fm.load("test")
        meta = {"dataset": "fashion-mnist", "labels": fm.LABELS, "preprocessing": fm.PREPROCESSING}
    elif task == "digits":
        from edgekit.data import fashion_mnist as fm

        x, y = fm.load_digits("train")
        xt, yt = fm.load_digits("test")
        meta = {"dataset": "sklearn-digits", "labels": [str(i) for i in range(10)],
                "preprocessing": fm.DIGITS_PREPROCESSING}
    elif task == "kws":
        from edgekit.data import kws

        x, y, xt, yt, meta = kws.load()
    else:
        raise UsageError(f"unknown PPP task {task!r}", f"use one of {', '.join(TASKS)}")
    return x, y, xt, yt, meta


def train_builtin(task: str, epochs: int | None = None, seed: int = 0, out=None, log=print) -> Path:
    import torch

    torch.set_num_threads(1)
    from edgekit.compress.ppp import save_checkpoint
    from edgekit.compress.ppp_train import evaluate, train_gated
    from edgekit.models.ppp_nets import build_gated

    spec = TASKS[task]
    x, y, xt, yt, meta = task_data(task)
    torch.manual_seed(seed)
    gated = build_gated(spec["cfg"], len(meta["labels"]))
    gated.cfg["input_shape"] = list(x.shape[1:])
    kw = dict(spec.get("kw", {}))
    hist = train_gated(gated, x, y, epochs=epochs or spec["epochs"], seed=seed, log=log, x_val=xt, y_val=yt, **kw)
    meta.update({"task": task, "seed": seed, "epochs": epochs or spec["epochs"], "input_name": "x",
                 "test_acc": round(evaluate(gated, xt, yt), 4), "history": hist["history"], "train_kwargs": kw})
    out = Path(out) if out else WEIGHTS / spec["file"]
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(gated, out, meta)


def resolve_checkpoint(src: str) -> Path:
    if src.startswith("builtin:"):
        name = src.split(":", 1)[1]
        files = {"ppp-fashion": "ppp_fashion.safetensors", "ppp-kws": "ppp_kws.safetensors",
                 "ppp-digits": "ppp_digits.safetensors"}
        name = name.removesuffix("-gated")  # builtin:ppp-fashion-gated (the `edgekit export` name) = same model
        if name not in files:
            raise UsageError(f"{src} is not a PPP built-in", f"use one of {', '.join('builtin:' + k for k in files)}")
        return WEIGHTS / files[name]
    p = Path(src)
    if not p.exists():
        raise UsageError(f"no gated bundle or PPP checkpoint at {src}",
                         "give the NAME.edgekit folder from `edgekit ppp export`, a .safetensors checkpoint, "
                         "or builtin:ppp-fashion / builtin:ppp-kws")
    return p


def personalize_any(src: str, data: str, out: str, keep_ratio: float | None = None, threshold: float = 0.5,
                    name: str | None = None, openvino: bool | None = None) -> dict:
    """Dispatch: bundle directory -> torch-free ONNX path; checkpoint -> PyTorch path."""
    p = Path(src)
    if p.is_dir():
        from edgekit.compress.ppp_onnx import personalize_bundle

        return personalize_bundle(p, data, out, keep_ratio=keep_ratio, threshold=threshold, name=name,
                                  openvino=openvino)
    from edgekit.compress.ppp_export import personalize_checkpoint

    return personalize_checkpoint(resolve_checkpoint(src), data, out, keep_ratio=keep_ratio,
                                  threshold=threshold, name=name)


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
        from edgekit.compress.ppp_export import export_gated_checkpoint

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
