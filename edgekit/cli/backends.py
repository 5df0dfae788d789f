"""`edgekit build-engine BUNDLE` (TensorRT engines on the target) and `edgekit trt-check MODEL`.

Import is light: TensorRT / onnx are imported inside the commands.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgekit.cli import output as cli

JSON = typer.Option(False, "--json", help="print the result as JSON")


def register(app: typer.Typer) -> None:
    app.command("build-engine")(build_engine)
    app.command("trt-check")(trt_check)


def _trt_artifacts(bundle, graph: str, precision: Optional[str]):
    from edgekit.core.errors import BundleError

    arts = [a for a in bundle.manifest.artifacts if a.target == "tensorrt" and a.graph == graph
            and (precision is None or a.precision == precision) and a.status != "failed"]
    if not arts:
        have = sorted({f"{a.target}/{a.precision}({a.status})" for a in bundle.manifest.artifacts})
        raise BundleError(f"bundle {bundle.root.name} has no usable tensorrt artifact for graph {graph!r}"
                          + (f" at {precision}" if precision else "") + f" (it has: {', '.join(have)})",
                          "re-export with --target tensorrt")
    return arts


def _check_against_stored(bundle, graph, art, engine_dir_cache: Optional[str]) -> dict | None:
    """Run the built engine on the bundle's stored example and compare with the stored reference."""
    from edgekit.core.inputs import load_validation
    from edgekit.exporters.validate import compare
    from edgekit.runtimes.tensorrt import TensorRTBackend

    rel = f"validation/{graph}.npz"
    if rel not in bundle.manifest.files:
        return None
    feeds, ref = load_validation(bundle, graph)
    impl = TensorRTBackend(bundle.path(art), art, bundle.graph(graph), cache_dir=engine_dir_cache)
    v = compare([ref], [impl.run(feeds)], art.precision, bundle.manifest.metadata.get("task") == "classification",
                where="tensorrt on this GPU")
    return {"passed": v.passed, "max_abs_err": v.max_abs_err, "tolerance": v.tolerance}


def build_engine(
    bundle: Path = typer.Argument(..., help="NAME.edgekit directory with a tensorrt artifact"),
    precision: Optional[str] = typer.Option(None, "--precision", "-p", help="only this precision (fp32/fp16/int8)"),
    graph: str = typer.Option("main", "--graph", help="graph of a multi-graph bundle"),
    profile: list[str] = typer.Option([], "--profile", help="SYMBOL=MIN,OPT,MAX for a dynamic dim; repeatable"),
    cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help="engine cache (default $EDGEKIT_TRT_CACHE or ~/.cache/edgekit/trt)"),
    rebuild: bool = typer.Option(False, "--rebuild", help="ignore a cached engine"),
    check: bool = typer.Option(True, "--check/--no-check", help="run the engine on the stored example and compare"),
    json_out: bool = JSON,
) -> None:
    """Build (or reuse from cache) the TensorRT engine for this GPU + TensorRT version + shapes."""
    from edgekit.core.bundle import Bundle
    from edgekit.runtimes.tensorrt import engine_for, read_plan
    from edgekit.runtimes.trt_cache import derive_profiles, parse_profile_overrides

    b = Bundle.load(bundle)
    g = b.graph(graph)
    overrides = parse_profile_overrides(profile)
    rows = []
    for art in _trt_artifacts(b, graph, precision):
        art_dir = b.path(art)
        profiles = None
        if overrides:
            profiles = derive_profiles(g.inputs, read_plan(art_dir)["example_shapes"], overrides)
        with cli.status(f"building TensorRT engine for {art.precision}", quiet=json_out):
            path, info = engine_for(art_dir, art.precision, cache_root=cache_dir, profiles=profiles, rebuild=rebuild)
        row = {"precision": art.precision, "engine": str(path), "cached": info["cached"], "key": info["key"][:16],
               "plan": info.get("plan"), "profiles": info.get("profiles")}
        if check and not profiles:
            row["check"] = _check_against_stored(b, graph, art, cache_dir)
        rows.append(row)
    if json_out:
        cli.emit_json({"bundle": str(b.root), "engines": rows})
        return
    cli.table("TensorRT engines", ["precision", "engine", "cached", "check"],
              [[r["precision"], r["engine"], r["cached"],
                "-" if not r.get("check") else f"{'ok' if r['check']['passed'] else 'FAILED'} "
                                               f"(max abs err {r['check']['max_abs_err']:.3g})"] for r in rows])


def trt_check(
    model: Path = typer.Argument(..., help="an .onnx file, or a bundle (checks its fp32 ONNX)"),
    trt_version: int = typer.Option(10, "--trt-version", help="TensorRT major version: 10 or 11"),
    json_out: bool = JSON,
) -> None:
    """List the ONNX nodes TensorRT's ONNX parser (of the given major version) cannot take. Exit 1 if any."""
    import onnx

    from edgekit.core.errors import MissingFileError
    from edgekit.exporters.trt_ops import check_onnx_ops

    path = Path(model)
    if path.is_dir():
        from edgekit.core.bundle import Bundle

        b = Bundle.load(path)
        art = b.find(target="onnx", precision="fp32")
        if art is None:
            raise MissingFileError(f"bundle {b.root.name} has no fp32 onnx artifact", "re-export with --target onnx")
        path = b.path(art)
    if not path.is_file():
        raise MissingFileError(f"{str(path)!r} does not exist", "pass an .onnx file or a bundle directory")
    res = check_onnx_ops(onnx.load(str(path)), trt_version)
    if json_out:
        cli.emit_json(res)
    else:
        cli.out.print(f"TensorRT {res['trt_major']} ({res['source']}): opset {res['opset']} "
                      f"{'ok' if res['opset_ok'] else 'OUT OF RANGE ' + str(res['opset_range'])}")
        if res["unsupported"]:
            cli.table("unsupported nodes", ["node", "op", "domain", "reason"],
                      [[u["node"], u["op_type"], u["domain"], u["reason"]] for u in res["unsupported"]])
        else:
            cli.out.print(f"all {sum(res['op_counts'].values())} nodes are supported")
    if res["unsupported"] or not res["opset_ok"]:
        raise typer.Exit(1)
