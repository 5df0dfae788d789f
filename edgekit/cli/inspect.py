"""`edgekit info | run | bench | validate | models` — everything that reads a bundle (torch-free)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer

from edgekit.cli import output as cli

JSON = typer.Option(False, "--json", help="print the result as JSON")
BACKEND = typer.Option("auto", "--backend", "-b", help="auto, onnxruntime, openvino, coreml, tensorrt, executorch")


def register(app: typer.Typer) -> None:
    for fn in (info, run, bench, validate, models):
        app.command(fn.__name__)(fn)


def info(bundle: Path = typer.Argument(..., help="NAME.edgekit directory"), json_out: bool = JSON) -> None:
    """Show a bundle's inputs, outputs, graphs, artifacts and metadata."""
    from edgekit.core.bundle import Bundle

    b = Bundle.load(bundle)
    m = b.manifest
    if json_out:
        cli.emit_json(m.to_dict())
        return
    cli.say(f"{m.name}  ({b.root})  edgekit {m.producer.get('edgekit', '?')}, {m.created}")
    for label, specs in (("inputs", m.inputs), ("outputs", m.outputs)):
        cli.say(f"  {label}: " + "; ".join(s.describe() for s in specs))
    if m.pipeline:
        cli.say(f"  pipeline: {m.pipeline.get('kind')} over graphs {', '.join(m.graphs)}")
    meta = {k: v for k, v in m.metadata.items() if k not in ("labels",)}
    if "labels" in m.metadata:
        labels = m.metadata["labels"]
        cli.say(f"  labels ({len(labels)}): {', '.join(map(str, labels[:12]))}{' …' if len(labels) > 12 else ''}")
    for k, v in meta.items():
        cli.say(f"  {k}: {v}")
    cli.table("artifacts", ["graph", "target", "precision", "status", "max abs err", "size MB", "sha256", "note"],
              [[a.graph, a.target, a.precision, a.status, cli.fmt(a.validation.max_abs_err if a.validation else None),
                cli.fmt(a.bytes / 1e6, ".3f"), a.sha256[:12], a.status_reason or ""] for a in m.artifacts])


def run(
    bundle: Path = typer.Argument(..., help="NAME.edgekit directory"),
    input: Optional[Path] = typer.Option(None, "--input", "-i", help=".npz with one array per input name (or .npy for one input)"),
    text: list[str] = typer.Option([], "--text", help="raw text (bundles that carry a tokenizer); repeatable"),
    backend: str = BACKEND,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="write all outputs to this .npz"),
    json_out: bool = JSON,
) -> None:
    """Run a bundle on inputs from a file (or text) and print the outputs (top-1 labels for classifiers)."""
    import edgekit
    from edgekit.core.errors import UsageError
    from edgekit.core.inputs import load_arrays

    sess = edgekit.load(bundle, backend=backend)
    meta = sess.bundle.manifest.metadata if hasattr(sess, "bundle") else _manifest(bundle).metadata
    if text:
        if hasattr(sess, "run_text"):
            outs = sess.run_text(list(text))
        else:  # a single-graph text model that carries its tokenizer (metadata.text)
            from edgekit.core.bundle import Bundle
            from edgekit.runtimes.pipelines.text import text_feeds
            outs = sess.run(text_feeds(Bundle.load(bundle, verify=False), [s.name for s in sess.inputs], list(text)))
    elif input is not None:
        outs = sess.run(load_arrays(input, sess.inputs))
    else:
        raise UsageError("no inputs given", "pass --input FILE.npz (one array per input name) or --text")
    if output is not None:
        _save_npz(output, outs)
    labels = meta.get("labels") if meta.get("task") == "classification" or "labels" in meta else None
    first = next(iter(outs.values()))
    preds = None
    if labels and isinstance(first, np.ndarray) and first.ndim == 2 and first.shape[1] == len(labels):
        idx = first.argmax(1)
        preds = [{"index": int(i), "label": str(labels[i])} for i in idx]
    if json_out:
        cli.emit_json({"backend": getattr(sess, "backend_name", backend), "predictions": preds,
                       "outputs": {k: {"shape": list(np.shape(v)), "dtype": str(np.asarray(v).dtype),
                                       **({"values": np.asarray(v).tolist()} if np.size(v) <= 4096 else {})}
                                   for k, v in outs.items()}})
        return
    cli.say(f"backend: {getattr(sess, 'backend_name', backend)}")
    for k, v in outs.items():
        a = np.asarray(v)
        cli.say(f"  {k}: {a.dtype}{list(a.shape)}" + (f" = {np.array2string(a, precision=4, threshold=20)}" if a.size <= 20 else ""))
    if preds is not None:
        shown = ", ".join(p["label"] for p in preds[:20])
        cli.say(f"  top-1: {shown}{' …' if len(preds) > 20 else ''}")
    if output is not None:
        cli.say(f"  wrote {output}")


def _manifest(path: Path):
    from edgekit.core.bundle import Bundle

    return Bundle.load(path, verify=False).manifest


def _save_npz(path: Path, outs: dict) -> None:
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, **{k: np.asarray(v) for k, v in outs.items()})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def bench(
    bundle: Path = typer.Argument(..., help="NAME.edgekit directory"),
    target: Optional[str] = typer.Option(None, "--target", "-t", help="only these targets (comma list)"),
    batch: Optional[int] = typer.Option(None, "--batch", help="batch size (tiles the stored example)"),
    iters: int = typer.Option(200, "--iters", help="timed runs per artifact"),
    warmup: int = typer.Option(20, "--warmup", help="untimed warm-up runs"),
    torch_ref: bool = typer.Option(True, "--torch/--no-torch", help="also time PyTorch eager when the model is a built-in and torch is installed"),
    graph: Optional[str] = typer.Option(None, "--graph", help="graph to time (default: main, or every graph of a multi-graph bundle)"),
    json_out: bool = JSON,
) -> None:
    """Latency of every artifact runnable here: session vs raw backend call (runtime overhead), p50/p90/p99."""
    from edgekit.core.bundle import Bundle
    from edgekit.runtimes.bench import bench_bundle, check_counts, example_feeds

    check_counts(iters, warmup, batch)
    b = Bundle.load(bundle)
    graphs = [graph] if graph else ["main"] if "main" in b.manifest.graphs else list(b.manifest.graphs)
    for g in graphs:
        spec = b.graph(g)  # unknown graph -> one clear error
        if batch and len(graphs) == 1 and not any(s.shape and isinstance(s.shape[0], str) for s in spec.inputs):
            from edgekit.core.errors import UsageError

            raise UsageError(f"--batch {batch}: graph {g!r} has a fixed batch axis "
                             f"({'; '.join(s.describe() for s in spec.inputs)})",
                             "drop --batch, or re-export with --dynamic NAME:0=batch")
    with cli.status("benchmarking", quiet=json_out) as st:
        # PyTorch first, before any backend session exists (idle runtime threads would skew it)
        eager = (_torch_eager(b, example_feeds(b, batch=batch), warmup, iters)
                 if torch_ref and graphs == ["main"] else None)
        rows = []
        for g in graphs:
            for r in bench_bundle(b, graph=g, batch=batch, iters=iters, warmup=warmup,
                                  targets=target.split(",") if target else None, progress=st.update):
                rows.append({"graph": g, **r})
    for r in rows:
        if eager and "session" in r:
            r["speedup_vs_torch"] = eager["p50_ms"] / r["session"]["p50_ms"]
    if json_out:
        cli.emit_json({"bundle": str(b.root), "torch_eager": eager, "artifacts": rows})
        return
    body = []
    for r in rows:
        s, raw = r.get("session") or {}, r.get("raw") or {}
        body.append([r["target"] if graphs == ["main"] else f"{r['graph']}/{r['target']}", r["precision"],
                     r.get("backend", "-"), r["status"], cli.fmt(r.get("max_abs_err")), cli.fmt(r.get("top1_agreement"), ".3f"),
                     cli.fmt(r.get("size_mb"), ".3f"), r.get("batch"), cli.fmt(s.get("p50_ms"), ".4f"), cli.fmt(s.get("p90_ms"), ".4f"), cli.fmt(s.get("p99_ms"), ".4f"),
                     cli.fmt(s.get("throughput_per_s"), ".1f"), cli.fmt(raw.get("p50_ms"), ".4f"),
                     (f"{r['overhead_us']:.1f} µs ({r['overhead_pct']:.1f}%)" if "overhead_us" in r
                      else "not runnable here" if "bench_error" in r else "-"),
                     cli.fmt(r.get("speedup_vs_torch"), ".2f")])
    if eager:
        body.append(["pytorch (eager)", "fp32", "torch", "reference", "0", "1.000", "-", rows[0].get("batch") if rows else "-",
                     cli.fmt(eager["p50_ms"], ".4f"), cli.fmt(eager["p90_ms"], ".4f"), cli.fmt(eager["p99_ms"], ".4f"),
                     cli.fmt(eager["throughput_per_s"], ".1f"), "-", "-", "1.00"])
    cli.table(f"{b.root.name}: {iters} timed runs after {warmup} warm-up", [
        "target", "precision", "backend", "status", "max abs err", "top-1 agree", "size MB", "batch", "p50 ms", "p90 ms", "p99 ms", "items/s",
        "raw p50 ms", "runtime overhead", "vs torch"], body)


def _torch_eager(b, feeds, warmup: int, iters: int):
    """PyTorch eager latency for built-in models, when torch is installed (else None)."""
    import importlib.util

    src = b.manifest.metadata.get("source", "")
    if not src.startswith("builtin:") or importlib.util.find_spec("torch") is None:
        return None
    from edgekit.exporters.adapter import torch_eager
    from edgekit.models import registry

    return torch_eager(registry.get(src.split(":", 1)[1]).module, feeds, warmup, iters)


def validate(bundle: Path = typer.Argument(..., help="NAME.edgekit directory"), json_out: bool = JSON) -> None:
    """Verify checksums, then re-run every artifact runnable here on the stored example and compare with the
    PyTorch reference outputs stored at export time (works without torch, e.g. on the device)."""
    from edgekit.core.bundle import Bundle
    from edgekit.core.errors import EdgekitError, ValidationFailed
    from edgekit.exporters.validate import compare, run_cases
    from edgekit.runtimes import open_graph
    from edgekit.runtimes.bench import backend_for

    b = Bundle.load(bundle)  # checksums + paths
    rows = []
    for a in b.manifest.artifacts:
        row = {"graph": a.graph, "target": a.target, "precision": a.precision, "status": a.status}
        rel = f"validation/{a.graph}.npz"
        if a.status not in ("ok", "not-validated") or rel not in b.manifest.files:
            row["result"] = "skipped" if a.status != "failed" else "failed at export"
            rows.append(row)
            continue
        with np.load(b.file(rel)) as z:
            feeds = {k[3:]: z[k] for k in z.files if k.startswith("in.")}
            ref = {k[4:]: z[k] for k in z.files if k.startswith("out.")}
        try:
            sess = open_graph(b, a.graph, backend_for(a.target) or "auto", a.precision)
        except EdgekitError as e:
            row["result"], row["reason"] = "cannot run here", str(e)
            rows.append(row)
            continue
        v = compare([ref], run_cases(sess.run, [feeds]), a.precision,
                    b.manifest.metadata.get("task") == "classification")
        row.update(result="pass" if v.passed else "FAIL", max_abs_err=v.max_abs_err, tolerance=v.tolerance,
                   backend=sess.backend_name, **({"reason": v.detail["mismatch"][0]} if v.detail.get("mismatch") else {}))
        rows.append(row)
    bad = [r for r in rows if r["result"] in ("FAIL", "failed at export")]
    if json_out:
        cli.emit_json({"bundle": str(b.root), "checksums": "ok", "artifacts": rows})
    else:
        cli.say(f"checksums: ok ({len(b.manifest.artifacts)} artifacts, {len(b.manifest.files)} files)")
        cli.table("numeric check vs stored PyTorch reference", ["graph", "target", "precision", "backend", "result",
                                                                "max abs err", "tolerance", "note"],
                  [[r["graph"], r["target"], r["precision"], r.get("backend", "-"), r["result"],
                    cli.fmt(r.get("max_abs_err")), cli.fmt(r.get("tolerance")), r.get("reason", "")] for r in rows])
    if bad:
        raise ValidationFailed(f"{len(bad)} artifact(s) failed validation", "re-export the bundle")


def models(json_out: bool = JSON) -> None:
    """List the built-in models (use as `edgekit export builtin:NAME`)."""
    from edgekit.models import registry

    items = [{"name": n, "default": n == registry.DEFAULT, "description": registry.DESCRIPTIONS.get(n, "")}
             for n in registry.BUILTINS]
    if json_out:
        cli.emit_json(items)
        return
    cli.table("built-in models", ["name", "description"],
              [[f"{i['name']}{' (default)' if i['default'] else ''}", i["description"]] for i in items])
