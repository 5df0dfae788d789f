"""Build a bundle: PyTorch model (or ModelSource) -> every requested artifact, each validated against PyTorch."""
from __future__ import annotations

import contextlib
import importlib
import io
import shutil
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
from edgekit.exporters.adapter import (
    adapt,
    keeping_modes,
    modes_kept,
    tracer_warnings,
)
from edgekit.exporters.calib import fit_batch, load_calibration
from edgekit.exporters.cases import GraphCases, insensitive, output_specs, unvalidated_dynamic
from edgekit.exporters.job import ExportJob
from edgekit.exporters.metrics import TASKS, normalize_task
from edgekit.exporters.onnx_fusion import keep_faster
from edgekit.exporters.source import (  # noqa: F401 - GraphSource, normalize_examples: imported from here too
    GraphSource,
    ModelSource,
    default_output_names,
    normalize_examples,
)
from edgekit.exporters.targets import JUDGES, Target, resolve_targets
from edgekit.exporters.validate import (
    EVIDENCE_CALIB,
    host,
    magnitude_cases,
    make_cases,
    split_holdout,
    validate_artifact,
    verdict,
)
from edgekit.runtimes import backend_class

from edgekit.core.bundle import (
    WORK_DIRS,
    Artifact,
    Bundle,
    BundleWriter,
    Graph,
    Manifest,
    Validation,
    make_work_dir,
)
from edgekit.core.errors import EdgekitError, ExportError, UsageError, first_line
from edgekit.core.notices import quiet_noise, stage_reporter, warn_replacing
from edgekit.core.specs import TensorSpec, check_dynamic

VALIDATION_FILE_LIMIT = 16 << 20  # stored example inputs+reference outputs, for on-device `edgekit validate`


@keeping_modes
def export_model(model: Any, example_inputs: Any = None, *, targets: Any = ("onnx",), out: str | Path = ".",
           name: str | None = None, precision: str = "fp32", dynamic: dict | None = None,
           input_names: list[str] | None = None, output_names: list[str] | None = None,
           metadata: dict | None = None, calib: Any = None, opset: int | None = None,
           extra_files: dict | None = None, pipeline: dict | None = None, options: dict | None = None,
           progress: Callable[[str], None] | None = None, task: str | None = None,
           accept_traced_control_flow: bool = False) -> Bundle:
    """Export one PyTorch module (or a ModelSource) to ``out/NAME.edgekit`` and validate every artifact.
    The module runs in eval mode; its own train/eval state is restored afterwards.

    ``task`` (auto | classification | embedding | regression) says how int8 outputs are judged (auto:
    2-D float outputs are class scores); ``accept_traced_control_flow`` accepts a graph whose trace baked
    in Python control flow on tensor values without the evidence that it holds at other inputs."""
    if isinstance(model, ModelSource) and model.exporter is not None:
        if precision != "fp32":
            raise UsageError(f"{model.name} is a multi-graph model and exports at fp32 only",
                             "drop --precision (its graphs are validated against PyTorch at fp32)")
        return model.exporter(out=Path(out), targets=targets, name=name, progress=progress)
    if isinstance(model, ModelSource):
        src = model
        meta = {**src.metadata, **(metadata or {})}
        calib = calib if calib is not None else src.calibration
        extra_files = {**(src.extra_files or {}), **(extra_files or {})} or None
        name = name or src.name
        outs = output_names or src.output_names or default_output_names(src.module, src.example_inputs)
        graph = GraphSource(src.module, src.example_inputs, outs,
                            dynamic if dynamic is not None else src.dynamic, onnx_path=src.onnx_path)
    else:
        if example_inputs is None:
            raise UsageError("example_inputs are required to export a PyTorch module",
                             "pass e.g. torch.randn(1, 3, 224, 224) or a dict name -> array")
        ex = normalize_examples(model, example_inputs, input_names)
        dynamic = check_dynamic(dynamic, ex)
        output_names = output_names or default_output_names(model, ex)
        meta = dict(metadata or {})
        graph = GraphSource(model, ex, list(output_names), dynamic)
        name = name or type(model).__name__.lower()
    return export_graphs({"main": graph}, pipeline=pipeline, targets=targets, out=out, name=name,
                         precision=precision, metadata=meta, extra_files=extra_files, calib=calib,
                         opset=opset, options=options, progress=progress, strict_dynamic=True, task=task,
                         accept_traced_control_flow=accept_traced_control_flow)


def _calibration(calib: Any, inputs: list[TensorSpec], needed: list[str]) -> list[dict[str, np.ndarray]] | None:
    if calib is None:
        if not needed:
            return None
        raise UsageError(f"{needed[0]} export needs calibration data",
                         "pass --calib DATA.npz (or calib= in Python); OpenVINO's weight-only int8 (-p int8w) "
                         "needs none")
    if callable(calib):
        calib = calib()
    return fit_batch(load_calibration(calib, inputs), inputs)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def export_graphs(graphs: dict[str, GraphSource], *, pipeline: dict | None = None,
                  inputs: list[TensorSpec] | None = None, outputs: list[TensorSpec] | None = None,
                  targets: Any = ("onnx",), out: str | Path = ".", name: str = "model", precision: Any = "fp32",
                  metadata: dict | None = None, extra_files: dict | None = None, calib: Any = None,
                  opset: int | None = None, options: dict | None = None,
                  progress: Callable[[str], None] | None = None, strict_dynamic: bool = False,
                  task: str | None = None, accept_traced_control_flow: bool = False) -> Bundle:
    """Export one or more graphs into one bundle. Every artifact is validated against PyTorch.

    A dynamic axis no validation case could vary (the reference rejects every other size) is an error
    with ``strict_dynamic`` (``edgekit.export``), else recorded in each artifact's validation detail.
    The returned Bundle carries ``timings`` (seconds per stage: references, each export and validation)."""
    started = time.perf_counter()
    precisions = [p.strip() for p in precision.split(",")] if isinstance(precision, str) else list(precision)
    rows = resolve_targets(targets, precisions)
    say = stage_reporter(progress)  # None: stage lines when stderr is a terminal; False: silent
    metadata = dict(metadata or {})
    if task is not None and str(task).lower() != "auto":
        if str(task).lower() not in TASKS:
            raise UsageError(f"unknown task {task!r}", f"choose one of {', '.join(TASKS)}")
        metadata["task"] = str(task).lower()
    options = options or {}
    asked = [n.strip().lower() for n in (targets.split(",") if isinstance(targets, str) else targets)]
    explicit = asked != ["all"]  # with "all", one target failing must not stop the others
    onnx_asked = "onnx" in asked or not explicit
    # an ONNX target added only as the base of others is built at fp32 alone
    plan = [(t, p) for t in rows for p in precisions if p in t.precisions and (t.name != "onnx" or onnx_asked)]
    if any(t.name == "onnx" for t in rows) and not any(t.name == "onnx" and p == "fp32" for t, p in plan):
        plan.insert(0, (rows[0], "fp32"))  # the fp32 ONNX is the portable base of the others
    needs_calib = [f"{t.name} {p}" for t, p in plan if p in t.calib_needed]
    policy = {"task": normalize_task(metadata.get("task")), "accept_traced_control_flow": accept_traced_control_flow,
              "explicit": explicit}
    timings: dict[str, Any] = {"reference_s": {}, "artifacts": []}
    writer = BundleWriter(out, name)
    warn_replacing(writer.dest)  # the Python API replaces an existing bundle, never silently
    with modes_kept(*(g.module for g in graphs.values())), writer as w, _work_dir("edgekit-export-") as tmp:
        manifest = Manifest(name=name, inputs=[], outputs=[], graphs={}, metadata=metadata, pipeline=pipeline)
        calib_list = None
        for gname, src in graphs.items():
            src.dynamic = check_dynamic(src.dynamic, src.example_inputs)
            names = list(src.example_inputs)
            module = adapt(src.module, names) if src.module is not None else None
            in_specs = [TensorSpec.from_array(n, a, (src.dynamic or {}).get(n)) for n, a in src.example_inputs.items()]
            say(f"[{gname}] computing reference outputs")
            t0 = time.perf_counter()
            gc = GraphCases(src, module, make_cases(src.example_inputs, src.dynamic) + list(src.extra_cases or []))
            cases, refs, dropped = gc.cases, gc.refs, gc.dropped
            timings["reference_s"][gname] = round(time.perf_counter() - t0, 3)
            unvalidated = unvalidated_dynamic(src, cases, dropped)
            if unvalidated is not None and strict_dynamic:
                raise unvalidated  # a user's model: refuse to write a spec the model cannot honour
            caveats = [f"dynamic axis not validated: {unvalidated.message}"] if unvalidated is not None else []
            caveats += insensitive(cases, refs)
            out_specs = output_specs(src.output_names, refs, cases, in_specs)
            graph = Graph(gname, in_specs, out_specs, {"example_shapes": {n: list(a.shape) for n, a in src.example_inputs.items()}})
            manifest.graphs[gname] = graph
            example = {f"in.{k}": v for k, v in cases[0].items()} | {f"out.{k}": v for k, v in refs[0].items()}
            if sum(a.nbytes for a in example.values()) <= VALIDATION_FILE_LIMIT:
                w.add_file(manifest, f"validation/{gname}.npz", _npz_bytes(example))
            if calib_list is None and gname == "main":
                calib_list = _calibration(calib, in_specs, needs_calib)
            ctx = _GraphCtx(w, manifest, gname, graph, module, src, calib_list if gname == "main" else None,
                            opset, options, Path(tmp), gc, policy, say, caveats)
            for t, p in plan:
                ctx.export_one(t, p)
            timings["artifacts"] += ctx.timings
            timings["reference_s"][gname] = round(timings["reference_s"][gname] + gc.seconds, 3)
        if not any(a.status in ("ok", "not-validated", "pending-build") for a in manifest.artifacts):
            reasons = "; ".join(f"{a.target}/{a.precision}: {a.status_reason}" for a in manifest.artifacts)
            raise ExportError(f"no usable artifact was produced ({reasons})", "run with --debug for details")
        single = next(iter(manifest.graphs.values()))
        manifest.inputs = list(inputs) if inputs is not None else single.inputs
        manifest.outputs = list(outputs) if outputs is not None else single.outputs
        for rel, src_file in (extra_files or {}).items():
            w.add_file(manifest, rel, src_file)
        dest = w.commit(manifest)
    bundle = Bundle.load(dest)
    timings["total_s"] = round(time.perf_counter() - started, 3)
    bundle.timings = timings
    return bundle


@contextlib.contextmanager
def _work_dir(prefix: str):
    """A temporary directory that a terminated CLI removes too (bundle.WORK_DIRS)."""
    d = make_work_dir(prefix)
    try:
        yield str(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)
        WORK_DIRS.discard(d)


def _torch(a: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(a))


class _GraphCtx:
    """Per-graph export state: exports, validates and stages one artifact at a time."""

    def __init__(self, w, manifest, gname, graph, module, src, calib_list, opset, options, tmp, gc: GraphCases,
                 policy: dict, say, caveats=()):
        self.w, self.manifest, self.gname, self.graph, self.module, self.src = w, manifest, gname, graph, module, src
        self.opset, self.options, self.tmp, self.gc, self.policy = opset, options, tmp, gc, policy
        self.calib_all = calib_list
        self.calib_list, self.holdout, self.holdout_how = split_holdout(calib_list)
        self.explicit, self.say, self.caveats = policy["explicit"], say, list(caveats)
        self.shared: dict = {}          # per-graph work exporters reuse (a converted model, an ExportedProgram)
        self.onnx_traced: list[str] = []  # tracer warnings of the fp32 ONNX the other artifacts build on
        self.timings: list[dict] = []
        try:  # exporters read shapes (and ONNX-sourced ones the values) from these, module or not
            self.tensors = {n: _torch(a) for n, a in src.example_inputs.items()}
        except ImportError:
            self.tensors = {}
        self.onnx_fp32: Path | None = Path(src.onnx_path) if src.onnx_path else None

    def export_one(self, t: Target, p: str, retry: dict | None = None, why: str = "") -> None:
        """Export, validate and stage one artifact. A module-sourced artifact failing validation is exported
        once more with ``t.retry_for(p)`` (``retry``; ``why`` = the first attempt's failure)."""
        suffix = "" if p == "fp32" else f".{p}"
        art = Artifact(target=t.name, graph=self.gname, precision=p, path=f"{self.gname}{suffix}{t.suffix}")
        work = self.tmp / self.gname / f"{t.name}-{p}{'-retry' if retry else ''}"
        work.mkdir(parents=True, exist_ok=True)
        options = {**self.options.get(t.name, {}), **(retry or {})}
        job = ExportJob(module=self.module, example_inputs=self.tensors, input_names=list(self.src.example_inputs),
                        output_names=list(self.src.output_names), dynamic=self.src.dynamic, precision=p,
                        workdir=work, onnx_path=self.onnx_fp32, calib=self.calib_list, opset=self.opset,
                        options=options, inputs=self.graph.inputs, outputs=self.graph.outputs, shared=self.shared,
                        metadata=self.manifest.metadata)
        self.say(f"[{self.gname}] exporting {t.name} {p}" + (f" again with {retry}" if retry else ""))
        t0 = time.perf_counter()
        timing = {"graph": self.gname, "target": t.name, "precision": p, **({"retry": True} if retry else {})}
        self.timings.append(timing)
        try:
            # exporter libraries' chatter (FX dumps, NNCF/coremltools bars) is captured; stdout carries --json
            with quiet_noise(), tracer_warnings() as traced:
                res = importlib.import_module(t.module).export(job)
        except Exception as e:  # one target's failure must not sink the others (unless it is the base ONNX)
            timing["export_s"] = round(time.perf_counter() - t0, 3)
            if self.explicit and t.name == "onnx" and p in ("fp32", "fp16") and not retry:
                if isinstance(e, EdgekitError):
                    raise
                raise ExportError(f"onnx export failed: {type(e).__name__}: {first_line(e)}",
                                  "run with --debug for the trace") from e
            art.status = "failed"
            art.status_reason = str(e) if isinstance(e, EdgekitError) else f"{type(e).__name__}: {first_line(e)}"
            if retry:
                art.status_reason = f"{why}; the retry with {retry} failed too: {art.status_reason}"
            if not isinstance(e, EdgekitError):
                art.extra["trace"] = traceback.format_exc(limit=3)[-2000:]
            self.manifest.artifacts.append(art)
            return
        timing["export_s"] = round(time.perf_counter() - t0, 3)
        art.toolchain = res.toolchain
        art.extra = {**res.extra, **({"notes": res.notes} if res.notes else {})}
        traced = sorted(set(traced) | set(art.extra.get("tracer_warnings", [])))
        if not traced and (art.extra.get("source") == "onnx" or (t.needs_onnx and "source" not in art.extra)):
            traced = list(self.onnx_traced)  # built from the fp32 ONNX: it carries that graph's trace
        if traced:
            art.extra["tracer_warnings"] = traced
        path = res.path
        if res.status == "ok":
            t1 = time.perf_counter()
            self._validate(t, art, res.path)
            if res.alternative is not None and art.status == "ok":
                path = self._alternative(t, art, res)
            timing["validate_s"] = round(time.perf_counter() - t1, 3)
            again = t.retry_for(p)
            if (art.status == "failed" and not retry and again and (self.module is not None or p == "int8")
                    and not set(again) & set(self.options.get(t.name, {}))
                    and not all(art.extra.get(k) == v for k, v in again.items())):
                self.say(f"[{self.gname}] {t.name} {p} {art.status_reason}")
                return self.export_one(t, p, again, f"{art.extra.get('exporter', 'first attempt')}: {art.status_reason}")
            if retry:
                art.extra["retry_reason"] = why
                art.extra.setdefault("notes", []).insert(0, f"re-exported with {retry} after the first graph "
                                                           f"failed validation ({why})")
        else:
            art.status, art.status_reason = res.status, res.status_reason
            art.validation = Validation(passed=None, where=host(), detail=res.validation_detail)
        staged = self.w.add(art.path, path)
        self.w.record(art)
        self.manifest.artifacts.append(art)
        art.extra["timing"] = {k: v for k, v in timing.items() if k.endswith("_s")}
        if t.name == "onnx" and p == "fp32" and art.status == "ok":
            self.onnx_fp32 = staged if path == res.path else res.path  # the others build on the unfused graph
            self.onnx_traced = list(art.extra.get("tracer_warnings", []))

    def _alternative(self, t: Target, art: Artifact, res: Any) -> Path:
        """Validate the exporter's alternative graph like any artifact, time it against the validated one and
        keep the faster (onnx_fusion.keep_faster); ``extra["fusion"]`` records which and why."""
        alt = Artifact(target=art.target, graph=art.graph, precision=art.precision, path=art.path,
                       extra=dict(art.extra))

        def validate(p: Path):
            self._validate(t, alt, p)
            return alt.validation

        keep, v, rec = keep_faster(res.path, res.alternative, validate,
                                   lambda p: backend_class(t.backend)(p, art, self.graph).run, self.gc.cases[0],
                                   art.extra.get("fusion", {}))
        art.extra["fusion"] = rec
        if v is not None:
            art.validation = v
        return keep

    def _validate(self, t: Target, art: Artifact, path: Path) -> None:
        """Validate on the base cases; int8 judged on the held-out calibration samples; a traced graph that
        baked in Python control flow also on the evidence cases (other magnitudes, calibration samples)."""
        quant = JUDGES[art.precision].rel_tol is None
        cases, refs, judged, how = self.gc.cases, self.gc.refs, None, "every validation case"
        if quant and self.holdout:
            hc, hr, _ = self.gc.group("holdout", lambda: self.holdout)
            cases, refs, judged, how = cases + hc, refs + hr, list(range(len(cases), len(cases) + len(hc))), self.holdout_how
        traced = art.extra.get("tracer_warnings") or []
        evidence = None
        if traced and not quant:
            ec, er, _ = self.gc.group("evidence", lambda: magnitude_cases(self.src.example_inputs)
                                      + list(self.calib_all or [])[:EVIDENCE_CALIB])
            evidence = (ec, er)
        self.say(f"[{self.gname}] validating {t.name} {art.precision} on {len(cases)} cases")
        try:
            art.validation = validate_artifact(path, t, art, self.graph, cases, refs, self.policy["task"], judged,
                                               evidence=evidence)
        except EdgekitError as e:
            art.validation = Validation(passed=None, where=host(), detail={"error": str(e)})
            art.status, art.status_reason = "not-validated", f"could not run here: {e}"
            return
        art.validation.detail["judged_on"] = how
        verdict(art, traced, self.caveats, self.gc.dropped, self.policy["accept_traced_control_flow"],
                holdout=bool(quant and self.holdout))
