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
    """Show a bundle's inputs, outputs, graphs, artifacts (with the integrity of each) and metadata."""
    from edgekit.core.bundle import Bundle

    b = Bundle.load(bundle, verify="used")  # a damaged artifact is listed as such, not fatal
    m = b.manifest
    integrity = b.integrity()
    auto = {g: _auto_info(b, g) for g in m.graphs}
    state = {a.path: _integrity(a, integrity) for a in m.artifacts}
    damaged = [why for rel, why in integrity.items() if why]
    if json_out:
        d = m.to_dict()
        for ad, a in zip(d["artifacts"], m.artifacts):
            ad["integrity"] = state[a.path]
        d["auto"] = auto
        d["files_integrity"] = {rel: "ok" if not integrity.get(rel) else f"damaged: {integrity[rel]}" for rel in m.files}
        cli.emit_json(d)
    else:
        _info_text(b, state, auto)
    if damaged:
        cli.err.print(f"edgekit: warning: {len(damaged)} damaged: {'; '.join(damaged)} (fix: copy the bundle again "
                      "or re-export it; the intact artifacts still run)", markup=False, highlight=False)


def _integrity(a, integrity: dict) -> str:
    if not a.sha256:
        return "no file"
    why = integrity.get(a.path)
    return f"damaged: {why}" if why else "ok"


def _info_text(b, state: dict, auto: dict) -> None:
    m = b.manifest
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
    from edgekit.runtimes.bench import validation_summary

    cli.table("artifacts", ["graph", "target", "precision", "status", "integrity", "validation", "size MB", "sha256",
                            "note"],
              [[a.graph, a.target, a.precision, a.status, state[a.path], validation_summary(a.validation),
                cli.fmt(a.bytes / 1e6, ".3f"), a.sha256[:12], a.status_reason or ""] for a in m.artifacts])
    for a in m.artifacts:
        v = a.validation.detail if a.validation else {}
        for c in v.get("caveats", []):
            cli.say(f"  {a.graph}/{a.target}/{a.precision}: caveat: {c}")
        if v.get("judged_on") and "tolerance_rule" not in v:
            cli.say(f"  {a.graph}/{a.target}/{a.precision}: judged on {v['judged_on']} ({v.get('task', 'auto')} task)")
    for g, info in auto.items():
        _say_auto(g if len(auto) > 1 else "", info)


def _auto_info(b, graph: str) -> dict:
    """What ``backend="auto"`` runs here: the cached measurement if there is one, else the fixed order."""
    from edgekit.core.errors import EdgekitError
    from edgekit.runtimes.autoselect import cache_key, label, read_cache
    from edgekit.runtimes.registry import auto_candidates

    try:
        cands = auto_candidates(b, graph)
    except EdgekitError as e:
        return {"how": "none", "why": str(e)}
    if not cands:
        return {"how": "none", "why": "no validated artifact can run here"}
    hit = read_cache(cache_key(b, graph, None, sorted({n for n, _ in cands})))
    if hit:
        return {**hit, "how": "cached"}
    return {"how": "not measured", "picked": label(*cands[0]),
            "why": "not measured on this machine yet: the first edgekit.load / run measures "
                   f"{len(cands)} candidate(s); the fixed order would pick this one"}


def _say_auto(graph: str, info: dict) -> None:
    where = f" [{graph}]" if graph else ""
    cli.say(f"auto{where}: {info.get('picked', '-')} ({info['how']}: {info.get('why', '')})")
    rows = [r for r in info.get("table", []) if "p50_us" in r or "error" in r]
    if rows:
        cli.table(f"auto measurement{where} ({info.get('measured', '')})", ["candidate", "p50 µs", "vs best", "open s", "note"],
                  [[r["candidate"], cli.fmt(r.get("p50_us"), ".1f"), cli.fmt(r.get("vs_best"), ".2f"),
                    cli.fmt(r.get("open_s"), ".2f"), r.get("error", "")] for r in rows])


def run(
    bundle: Path = typer.Argument(..., help="NAME.edgekit directory"),
    input: Optional[Path] = typer.Option(None, "--input", "-i", help=".npz with one array per input name (or .npy for one input)"),
    text: list[str] = typer.Option([], "--text", help="raw text (bundles that carry a tokenizer); repeatable"),
    backend: str = BACKEND,
    precision: Optional[str] = typer.Option(None, "--precision", "-p", help="fp32, fp16 or int8 (default: the "
                                            "first validated artifact runnable here)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="write all outputs to this .npz"),
    json_out: bool = JSON,
) -> None:
    """Run a bundle on inputs from a file (or text) and print the outputs (top-1 labels for classifiers).
    Says which backend, precision and artifact ran (and the device / threads where the backend has them)."""
    import edgekit
    from edgekit.core.errors import UsageError
    from edgekit.core.inputs import load_arrays

    if precision is not None:  # say the precision is missing (not only that nothing runnable was found)
        have = sorted({a.precision for a in _manifest(bundle).artifacts if a.status in ("ok", "not-validated")})
        if precision not in have:
            raise UsageError(f"{bundle} has no usable {precision} artifact (it has: {', '.join(have) or 'none'})",
                             f"drop --precision, or re-export with --precision {precision}")
    sess = edgekit.load(bundle, backend=backend, precision=precision)
    used = ran_with(sess)
    meta = sess.bundle.manifest.metadata if hasattr(sess, "bundle") else _manifest(bundle).metadata
    if text:
        if hasattr(sess, "run_text"):
            outs = sess.run_text(list(text))
        else:  # a single-graph text model that carries its tokenizer (metadata.text)
            from edgekit.core.bundle import Bundle
            from edgekit.runtimes.pipelines.text import text_feeds
            outs = sess.run(text_feeds(Bundle.load(bundle, verify="used"), [s.name for s in sess.inputs], list(text)))
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
        cli.emit_json({"backend": getattr(sess, "backend_name", backend), "ran": used, "predictions": preds,
                       "outputs": {k: {"shape": list(np.shape(v)), "dtype": str(np.asarray(v).dtype),
                                       **({"values": np.asarray(v).tolist()} if np.size(v) <= 4096 else {})}
                                   for k, v in outs.items()}})
        return
    for u in used:
        where = ", ".join(f"{k} {u[k]}" for k in ("device", "threads") if u.get(k))
        cli.say(f"{u['graph'] + ': ' if len(used) > 1 else ''}backend {u['backend']}, precision {u['precision']}, "
                f"artifact {u['artifact']} ({u['status']}{', ' + where if where else ''})")
    for k, v in outs.items():
        a = np.asarray(v)
        cli.say(f"  {k}: {a.dtype}{list(a.shape)}" + (f" = {np.array2string(a, precision=4, threshold=20)}" if a.size <= 20 else ""))
    if preds is not None:
        shown = ", ".join(p["label"] for p in preds[:20])
        cli.say(f"  top-1: {shown}{' …' if len(preds) > 20 else ''}")
    if output is not None:
        cli.say(f"  wrote {output}")


def ran_with(sess) -> list[dict]:
    """Backend, precision, artifact (and device/threads) of each graph a session or pipeline runs."""
    import os

    sessions = getattr(sess, "sessions", None) or {"main": sess}
    rows = []
    for graph, s in sessions.items():
        art, impl = getattr(s, "artifact", None), getattr(s, "backend", None)
        device = getattr(impl, "device", None) or next((p for p in getattr(impl, "providers", None) or []
                                                        if p != "AzureExecutionProvider"), None)  # ORT: no device
        threads = os.environ.get("EDGEKIT_THREADS") or None  # the backends read it (else their default)
        rows.append({"graph": graph, "backend": s.backend_name, "precision": art.precision if art else None,
                     "artifact": f"{s.backend.path}" if impl is not None else None, "status": art.status if art else None,
                     "device": device, "threads": threads})
    return rows


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
    plot: Optional[Path] = typer.Option(None, "--plot", help="also write a bar chart of the latencies to this PNG"),
    json_out: bool = JSON,
) -> None:
    """Latency of every artifact runnable here, timed side by side (interleaved, same timer): session vs raw
    backend call (runtime overhead), p50/p90/p99, ratio to the fastest, and what backend=auto picks."""
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
        rows, auto = [], {}
        for g in graphs:
            for r in bench_bundle(b, graph=g, batch=batch, iters=iters, warmup=warmup,
                                  targets=target.split(",") if target else None, progress=st.update):
                rows.append({"graph": g, **r})
            auto[g] = _auto_choice(b, g, st.update)
    for r in rows:
        if eager and "session" in r:
            r["speedup_vs_torch"] = eager["p50_ms"] / r["session"]["p50_ms"]
    title = f"{b.root.name}: {iters} timed runs after {warmup} warm-up, interleaved"
    if plot is not None:
        from edgekit.runtimes.bench import plot_rows

        plot_rows(rows, str(plot), title)
    if json_out:
        cli.emit_json({"bundle": str(b.root), "torch_eager": eager, "artifacts": rows, "auto": auto,
                       **({"plot": str(plot)} if plot else {})})
        return
    body = []
    for r in rows:
        s, raw = r.get("session") or {}, r.get("raw") or {}
        body.append([r["target"] if graphs == ["main"] else f"{r['graph']}/{r['target']}", r["precision"],
                     r.get("backend", "-"), r["status"], r.get("metric", "-"),
                     cli.fmt(r.get("size_mb"), ".3f"), r.get("batch"), cli.fmt(s.get("p50_ms"), ".4f"), cli.fmt(s.get("p90_ms"), ".4f"), cli.fmt(s.get("p99_ms"), ".4f"),
                     cli.fmt(s.get("throughput_per_s"), ".1f"), cli.fmt(r.get("vs_fastest"), ".2f"), cli.fmt(raw.get("p50_ms"), ".4f"),
                     (f"{r['overhead_us']:.1f} µs ({r['overhead_pct']:.1f}%)" if "overhead_us" in r
                      else "not runnable here" if "bench_error" in r else "-"),
                     cli.fmt(r.get("speedup_vs_torch"), ".2f")])
    if eager:
        body.append(["pytorch (eager)", "fp32", "torch", "reference", "-", "-", rows[0].get("batch") if rows else "-",
                     cli.fmt(eager["p50_ms"], ".4f"), cli.fmt(eager["p90_ms"], ".4f"), cli.fmt(eager["p99_ms"], ".4f"),
                     cli.fmt(eager["throughput_per_s"], ".1f"), "-", "-", "-", "1.00"])
    cli.table(title, [
        "target", "precision", "backend", "status", "validation", "size MB", "batch", "p50 ms", "p90 ms", "p99 ms", "items/s",
        "vs fastest", "raw p50 ms", "runtime overhead", "vs torch"], body)
    for g, info in auto.items():
        _say_auto(g if len(auto) > 1 else "", info)
    if plot is not None:
        cli.say(f"wrote {plot}")


def _auto_choice(b, graph: str, say) -> dict:
    """Open the graph with backend="auto" (measuring here on a first load) and report the choice."""
    from edgekit.core.errors import EdgekitError
    from edgekit.runtimes import open_graph

    say(f"auto choice for {graph}")
    try:
        return open_graph(b, graph, "auto").choice
    except EdgekitError as e:
        return {"how": "none", "why": str(e)}


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
    """Verify every file's checksum, then re-run every artifact runnable here on the stored example and compare
    with the PyTorch reference outputs stored at export time (works without torch, e.g. on the device).
    Exits 1 unless every artifact it could run passed and at least one was compared."""
    from edgekit.core.bundle import Bundle
    from edgekit.core.errors import ValidationFailed
    from edgekit.exporters.recheck import recheck_bundle

    b = Bundle.load(bundle, verify="used")  # manifest + paths now; every file's checksum below
    res = recheck_bundle(b)
    rows, damaged = res["artifacts"], res["damaged_files"]
    bad_rows = [r for r in rows if r["result"] in ("FAIL", "damaged", "failed at export")]
    if json_out:
        cli.emit_json({"bundle": str(b.root), "checksums": "damaged" if damaged or any(
            r["result"] == "damaged" for r in rows) else "ok", "damaged_files": damaged,
            "compared": res["compared"], "artifacts": rows})
    else:
        _say_checksums(b, rows, damaged)
        cli.table("numeric check vs stored PyTorch reference", ["graph", "target", "precision", "backend", "result",
                                                                "max abs err", "tolerance", "note"],
                  [[r["graph"], r["target"], r["precision"], r.get("backend", "-"), r["result"],
                    cli.fmt(r.get("max_abs_err")), cli.fmt(r.get("tolerance")), r.get("reason", "")] for r in rows])
    if res["failed"]:
        kinds = sorted({r["result"] for r in bad_rows} | ({"damaged file"} if damaged else set()))
        raise ValidationFailed(f"{res['failed']} artifact(s)/file(s) failed validation ({', '.join(kinds)})",
                               "copy the bundle again if it is damaged, else re-export it")
    if not res["compared"]:
        raise ValidationFailed("no artifact could be compared with the stored reference outputs here "
                               f"({len(rows)} artifact(s), none runnable on this machine)",
                               "install the backend of one of the artifacts (see the table), or validate on the device")


def _say_checksums(b, rows: list[dict], damaged: dict) -> None:
    bad = [f"{r['graph']}/{r['target']}/{r['precision']}" for r in rows if r["result"] == "damaged"] + sorted(damaged)
    n = f"{len(b.manifest.artifacts)} artifacts, {len(b.manifest.files)} files"
    cli.say(f"checksums: ok ({n})" if not bad else f"checksums: {len(bad)} damaged ({', '.join(bad)}) of {n}")
    for rel, why in damaged.items():
        cli.say(f"  damaged: {why}")


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
