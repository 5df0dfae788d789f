"""`edgekit export`: any MODEL form -> a validated bundle, then one table of every artifact."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgekit.cli import output as cli


def register(app: typer.Typer) -> None:
    app.command("export")(export)


def export(
    model: Optional[str] = typer.Argument(None, help="omitted = embedded default; builtin:NAME, FILE.pt2, FILE.onnx, FILE.pt (TorchScript / torch.save(model) / token-gating checkpoint), a transformers dir, pkg.mod:fn or path/file.py:fn"),
    target: str = typer.Option("all", "--target", "-t", help="onnx,openvino,coreml,tensorrt,executorch or all "
                               "(= every target installed here)"),
    precision: str = typer.Option("fp32", "--precision", "-p", help="fp32, fp16, int8 (weights+activations) or int8w "
                                  "(OpenVINO weight-only int8); comma list allowed"),
    calib: Optional[Path] = typer.Option(None, "--calib", help="calibration data for int8: .npz or a directory of .npy"),
    inputs: list[str] = typer.Option([], "--input", help="NAME:SHAPE[:DTYPE] example input (repeatable)"),
    dynamic: list[str] = typer.Option([], "--dynamic", help="NAME:AXIS=DIM dynamic axis (repeatable), e.g. x:0=batch"),
    out: Path = typer.Option(Path("out"), "--out", "-o", help="directory to write NAME.edgekit into"),
    name: Optional[str] = typer.Option(None, "--name", help="bundle name (default: the model's)"),
    force: bool = typer.Option(False, "--force", help="replace an existing OUT/NAME.edgekit (refused without it)"),
    opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset (default 18)"),
    option: list[str] = typer.Option([], "--option", help="TARGET.KEY=VALUE exporter option (repeatable), e.g. "
                                      "coreml.minimum_deployment_target=iOS17, tensorrt.trt_version=11"),
    task: str = typer.Option("auto", "--task", help="how int8 outputs are judged: auto (2-D float outputs are class "
                             "scores), classification, embedding or regression"),
    accept_traced: bool = typer.Option(False, "--accept-traced-control-flow", help="accept a graph whose trace baked "
                                       "in Python control flow on tensor values without evidence it holds elsewhere"),
    bench: bool = typer.Option(True, "--bench/--no-bench", help="measure p50/p90 latency of each artifact"),
    iters: int = typer.Option(100, "--iters", help="timed runs per artifact for the latency columns"),
    json_out: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Export a model to every requested target, validate each artifact against PyTorch, print a table.

    Checks come first (arguments, the model on its example inputs, int8 calibration data, an existing
    bundle at OUT/NAME.edgekit: refused without --force), then the export, then the latency columns."""
    precisions = [p.strip() for p in precision.split(",")]
    options = check_arguments(target, precisions, inputs, dynamic, option, bench, iters, name, out, calib, task)
    from edgekit.api import export as do_export
    from edgekit.core.notices import quiet_noise
    from edgekit.models.resolve import check_runs, resolve
    from edgekit.runtimes.bench import bench_bundle

    with cli.progress("resolving the model", quiet=json_out) as st, quiet_noise():
        src = resolve(model, inputs, dynamic)
        name = name or src.name
        check_destination(out, name, force)
        st.update("running the model once on its example inputs")
        check_runs(src, inputs)
        calib_data = check_calibration(src, precisions, calib)
        bundle = do_export(src, targets=target, precision=precision, out=out, name=name, calib=calib_data,
                           opset=opset, options=options, progress=st.update, task=task,
                           accept_traced_control_flow=accept_traced)
        single = "main" in bundle.manifest.graphs and not bundle.manifest.pipeline
        rows = (bench_bundle(bundle, iters=iters, warmup=max(5, iters // 10), progress=st.update)
                if bench and single else [])
    notes = {(a.graph, a.target, a.precision): a.extra.get("notes", []) for a in bundle.manifest.artifacts}
    if not rows:  # --no-bench, or a multi-graph bundle (benchmark those with their own commands)
        from edgekit.runtimes.bench import validation_summary

        rows = [{"graph": a.graph, "target": a.target, "precision": a.precision, "status": a.status, "reason": a.status_reason,
                 "max_abs_err": a.validation.max_abs_err if a.validation else None,
                 "top1_agreement": (a.validation.detail or {}).get("top1_agreement") if a.validation else None,
                 "metric": validation_summary(a.validation), "size_mb": a.bytes / 1e6}
                for a in bundle.manifest.artifacts]
    failed = [r for r in rows if r["status"] == "failed"]
    if json_out:
        cli.emit_json({"bundle": str(bundle.root), "model": src.name, "artifacts": rows,
                       "timings": getattr(bundle, "timings", None)})
    else:
        print_rows(f"{bundle.root}", rows)
        for r in rows:
            if r.get("reason"):
                cli.say(f"  {r['target']}/{r['precision']}: {r['status']}: {r['reason']}")
            for note in notes.get((r.get("graph", "main"), r["target"], r["precision"]), []):
                cli.say(f"  {r['target']}/{r['precision']}: note: {note}")
    if failed:
        raise typer.Exit(1)


def check_arguments(target: str, precisions: list[str], inputs: list[str], dynamic: list[str], option: list[str],
                    bench: bool, iters: int, name: str | None, out: Path, calib: Path | None, task: str) -> dict:
    """Every check that needs neither torch nor the model; returns the parsed --option values."""
    from edgekit.core.errors import MissingFileError, UsageError
    from edgekit.exporters.metrics import TASKS
    from edgekit.exporters.targets import resolve_targets
    from edgekit.models.examples import parse_dynamic, parse_input

    resolve_targets(target, precisions)
    if task.lower() not in TASKS:
        raise UsageError(f"unknown --task {task!r}", f"choose one of {', '.join(TASKS)}")
    for spec in inputs:
        parse_input(spec)
    parse_dynamic(dynamic)
    options = parse_options(option)
    if bench:
        from edgekit.runtimes.bench import check_counts

        check_counts(iters)
    if name is not None:
        from edgekit.core.bundle import check_name

        check_name(name)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a directory", "give a new or existing directory")
    if calib is not None and not calib.exists():
        raise MissingFileError(f"--calib {calib} does not exist", "give an .npz (one array per input) or a "
                               "directory of .npy files")
    return options


def check_destination(out: Path, name: str, force: bool) -> None:
    """Replacing a bundle takes --force: refused (with what it holds) before any slow work."""
    from edgekit.core.bundle import SUFFIX
    from edgekit.core.errors import UsageError
    from edgekit.core.notices import existing_bundle

    dest = out / (name if name.endswith(SUFFIX) else name + SUFFIX)
    held = existing_bundle(dest)
    if held is not None and not force:
        raise UsageError(f"{dest} already exists ({held})",
                         "pass --force to replace it, or --name NEW / --out DIR to keep both")


def check_calibration(src, precisions: list[str], calib: Path | None):
    """int8 needs calibration data: checked (and read) before the export, not after minutes of it."""
    if "int8" not in precisions or src.exporter is not None:
        return calib
    from edgekit.core.errors import UsageError

    if calib is None and src.calibration is None:
        raise UsageError("int8 needs calibration data and this model carries none",
                         "pass --calib DATA.npz (one array per input, a few hundred samples) or drop int8 "
                         "from --precision")
    if calib is None:
        return None
    from edgekit.core.specs import TensorSpec
    from edgekit.exporters.calib import load_calibration

    specs = [TensorSpec.from_array(n, a, (src.dynamic or {}).get(n)) for n, a in src.example_inputs.items()]
    return load_calibration(calib, specs)


def parse_options(items: list[str]) -> dict[str, dict]:
    """``TARGET.KEY=VALUE`` -> {target: {key: value}}; values parse as JSON when they can (numbers, lists)."""
    import json

    from edgekit.core.errors import UsageError
    from edgekit.exporters.targets import TARGETS

    out: dict[str, dict] = {}
    for item in items:
        head, sep, value = item.partition("=")
        target, dot, key = head.partition(".")
        if not sep or not dot or not key:
            raise UsageError(f"cannot parse --option {item!r}", "use TARGET.KEY=VALUE, e.g. coreml.minimum_deployment_target=iOS17")
        if target not in TARGETS:
            raise UsageError(f"--option {item!r} names unknown target {target!r}", f"targets: {', '.join(TARGETS)}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(target, {})[key] = parsed
    return out


def print_rows(title: str, rows: list[dict]) -> None:
    """The export table. No "vs torch" column: one eager-vs-artifact ratio timed back to back swung 7x to
    788x on a loaded machine; `edgekit bench` times PyTorch for built-in models."""
    body = []
    graphs = {r.get("graph", "main") for r in rows}
    for r in rows:
        s = r.get("session") or {}
        body.append([r["target"] if graphs == {"main"} else f"{r['graph']}/{r['target']}", r["precision"], r["status"],
                     r.get("metric", "-"), cli.fmt(r.get("size_mb"), ".3f"),
                     cli.fmt(s.get("p50_ms"), ".3f"), cli.fmt(s.get("p90_ms"), ".3f")])
    cli.table(title, ["target", "precision", "status", "validation", "size MB", "p50 ms", "p90 ms"], body)
