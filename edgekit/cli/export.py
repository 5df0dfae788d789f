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
    target: str = typer.Option("all", "--target", "-t", help="onnx,openvino,coreml,tensorrt,executorch or all (= every target installed here)"),
    precision: str = typer.Option("fp32", "--precision", "-p", help="fp32, fp16 or int8 (comma list allowed)"),
    calib: Optional[Path] = typer.Option(None, "--calib", help="calibration data for int8: .npz or a directory of .npy"),
    inputs: list[str] = typer.Option([], "--input", help="NAME:SHAPE[:DTYPE] example input (repeatable)"),
    dynamic: list[str] = typer.Option([], "--dynamic", help="NAME:AXIS=DIM dynamic axis (repeatable), e.g. x:0=batch"),
    out: Path = typer.Option(Path("out"), "--out", "-o", help="directory to write NAME.edgekit into"),
    name: Optional[str] = typer.Option(None, "--name", help="bundle name (default: the model's)"),
    opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset (default 18)"),
    option: list[str] = typer.Option([], "--option", help="TARGET.KEY=VALUE exporter option (repeatable), e.g. "
                                      "coreml.minimum_deployment_target=iOS17, tensorrt.trt_version=11"),
    bench: bool = typer.Option(True, "--bench/--no-bench", help="measure p50/p90 latency of each artifact"),
    iters: int = typer.Option(100, "--iters", help="timed runs per artifact for the latency columns"),
    json_out: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Export a model to every requested target, validate each artifact against PyTorch, print a table."""
    from edgekit.exporters.targets import resolve_targets
    from edgekit.models.examples import parse_dynamic, parse_input

    # cheap argument checks first, before torch is imported
    resolve_targets(target, [p.strip() for p in precision.split(",")])
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
    from edgekit.api import export as do_export
    from edgekit.exporters.adapter import torch_eager
    from edgekit.models.resolve import resolve
    from edgekit.runtimes.bench import bench_bundle

    with cli.status("resolving model", quiet=json_out) as st:
        src = resolve(model, inputs, dynamic)
        eager = None
        if bench and src.module is not None:
            # PyTorch first, before any backend library is loaded: their idle thread pools would starve
            # torch's OpenMP threads and make eager look far slower than it is
            st.update("benchmarking PyTorch eager")
            eager = torch_eager(src.module, src.example_inputs, warmup=max(5, iters // 10), iters=iters)
        bundle = do_export(src, targets=target, precision=precision, out=out, name=name, calib=calib,
                           opset=opset, options=options, progress=st.update)
        single = "main" in bundle.manifest.graphs and not bundle.manifest.pipeline
        rows = (bench_bundle(bundle, iters=iters, warmup=max(5, iters // 10), progress=st.update)
                if bench and single else [])
    notes = {(a.graph, a.target, a.precision): a.extra.get("notes", []) for a in bundle.manifest.artifacts}
    if not rows:  # --no-bench, or a multi-graph bundle (benchmark those with their own commands)
        rows = [{"graph": a.graph, "target": a.target, "precision": a.precision, "status": a.status, "reason": a.status_reason,
                 "max_abs_err": a.validation.max_abs_err if a.validation else None,
                 "top1_agreement": (a.validation.detail or {}).get("top1_agreement") if a.validation else None,
                 "size_mb": a.bytes / 1e6} for a in bundle.manifest.artifacts]
    for r in rows:
        if eager and "session" in r:
            r["speedup_vs_torch"] = eager["p50_ms"] / r["session"]["p50_ms"]
    failed = [r for r in rows if r["status"] == "failed"]
    if json_out:
        cli.emit_json({"bundle": str(bundle.root), "model": src.name, "torch_eager": eager, "artifacts": rows})
    else:
        print_rows(f"{bundle.root}", rows, eager)
        for r in rows:
            if r.get("reason"):
                cli.say(f"  {r['target']}/{r['precision']}: {r['status']}: {r['reason']}")
            for note in notes.get((r.get("graph", "main"), r["target"], r["precision"]), []):
                cli.say(f"  {r['target']}/{r['precision']}: note: {note}")
    if failed:
        raise typer.Exit(1)


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


def print_rows(title: str, rows: list[dict], eager: dict | None) -> None:
    body = []
    graphs = {r.get("graph", "main") for r in rows}
    for r in rows:
        s = r.get("session") or {}
        body.append([r["target"] if graphs == {"main"} else f"{r['graph']}/{r['target']}", r["precision"], r["status"], cli.fmt(r.get("max_abs_err")),
                     cli.fmt(r.get("top1_agreement"), ".3f"), cli.fmt(r.get("size_mb"), ".3f"),
                     cli.fmt(s.get("p50_ms"), ".3f"), cli.fmt(s.get("p90_ms"), ".3f"),
                     cli.fmt(r.get("speedup_vs_torch"), ".2f") + ("x" if r.get("speedup_vs_torch") else "")])
    if eager:
        body.append(["pytorch (eager)", "fp32", "reference", "0", "1.000", "-", cli.fmt(eager["p50_ms"], ".3f"),
                     cli.fmt(eager["p90_ms"], ".3f"), "1.00x"])
    cli.table(title, ["target", "precision", "status", "max abs err", "top-1 agree", "size MB", "p50 ms",
                      "p90 ms", "vs torch"], body)
