"""Build a bundle: PyTorch model (or ModelSource) -> every requested artifact, each validated against PyTorch."""
from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import shutil
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from edgekit.exporters.adapter import (
    adapt,
    as_input_array,
    flatten_outputs,
    keeping_modes,
    modes_kept,
    reference,
    to_tensors,
)
from edgekit.exporters.calib import load_calibration
from edgekit.exporters.job import ExportJob
from edgekit.exporters.source import ModelSource
from edgekit.exporters.targets import Target, resolve_targets
from edgekit.exporters.validate import host, make_cases, validate_artifact

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


@dataclass
class GraphSource:
    module: Any                                   # torch.nn.Module, or None when onnx_path is the source
    example_inputs: dict[str, np.ndarray]         # in the module's positional order
    output_names: list[str]
    dynamic: dict[str, dict[int, str]] | None = None
    extra_cases: list[dict[str, np.ndarray]] | None = None
    onnx_path: str | None = None


def normalize_examples(model: Any, example_inputs: Any, input_names: list[str] | None) -> dict[str, np.ndarray]:
    """dict / tuple / single tensor -> ordered {name: np.ndarray}."""
    if isinstance(example_inputs, dict):
        return {str(k): as_input_array(str(k), v) for k, v in example_inputs.items()}
    items = list(example_inputs) if isinstance(example_inputs, (tuple, list)) else [example_inputs]
    if input_names is None:
        try:
            params = [p for p in inspect.signature(model.forward).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            input_names = [p.name for p in params[:len(items)]] if len(params) >= len(items) else None
        except (TypeError, ValueError, AttributeError):
            input_names = None
        if not input_names or input_names == ["input"] * len(items):
            input_names = ["x"] if len(items) == 1 else [f"input_{i}" for i in range(len(items))]
    if len(input_names) != len(items):
        raise UsageError(f"{len(items)} example inputs but {len(input_names)} input names",
                         "give one name per example input")
    return {n: as_input_array(n, a) for n, a in zip(input_names, items)}



def _default_output_names(module: Any, ex: dict[str, np.ndarray]) -> list[str]:
    import torch

    try:
        with torch.inference_mode():
            raw = adapt(module, list(ex)).raw(*to_tensors(ex, list(ex)))  # un-flattened, to read dict keys
    except Exception as e:
        raise _fails_on_example(e) from e
    if isinstance(raw, tuple) and hasattr(raw, "_fields"):  # a namedtuple: name outputs after its fields
        raw = raw._asdict()
    if isinstance(raw, dict):  # dicts and transformers ModelOutputs: name outputs after their keys
        names = []
        for key, value in raw.items():
            n = len(flatten_outputs(value)) if value is not None else 0
            names += [str(key)] if n == 1 else [f"{key}_{i}" for i in range(n)]
        return names
    n_out = len(flatten_outputs(raw))
    return ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]


@keeping_modes
def export_model(model: Any, example_inputs: Any = None, *, targets: Any = ("onnx",), out: str | Path = ".",
           name: str | None = None, precision: str = "fp32", dynamic: dict | None = None,
           input_names: list[str] | None = None, output_names: list[str] | None = None,
           metadata: dict | None = None, calib: Any = None, opset: int | None = None,
           extra_files: dict | None = None, pipeline: dict | None = None, options: dict | None = None,
           progress: Callable[[str], None] | None = None) -> Bundle:
    """Export one PyTorch module (or a ModelSource) to ``out/NAME.edgekit`` and validate every artifact.
    The module runs in eval mode; its own train/eval state is restored afterwards."""
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
        outs = output_names or src.output_names or _default_output_names(src.module, src.example_inputs)
        graph = GraphSource(src.module, src.example_inputs, outs,
                            dynamic if dynamic is not None else src.dynamic, onnx_path=src.onnx_path)
    else:
        if example_inputs is None:
            raise UsageError("example_inputs are required to export a PyTorch module",
                             "pass e.g. torch.randn(1, 3, 224, 224) or a dict name -> array")
        ex = normalize_examples(model, example_inputs, input_names)
        dynamic = check_dynamic(dynamic, ex)
        output_names = output_names or _default_output_names(model, ex)
        meta = dict(metadata or {})
        graph = GraphSource(model, ex, list(output_names), dynamic)
        name = name or type(model).__name__.lower()
    return export_graphs({"main": graph}, pipeline=pipeline, targets=targets, out=out, name=name,
                         precision=precision, metadata=meta, extra_files=extra_files, calib=calib,
                         opset=opset, options=options, progress=progress, strict_dynamic=True)


def _references(src: GraphSource, module: Any, cases: list[dict]) -> tuple[list[dict], list[dict], list[str]]:
    """Reference outputs per case; random cases the model itself rejects are dropped (noted)."""
    names = list(src.example_inputs)
    keep, refs, dropped = [], [], []
    for i, case in enumerate(cases):
        try:
            if module is not None:
                r = reference(module, [case], names, src.output_names)[0]
            else:
                import onnxruntime as ort

                sess = ort.InferenceSession(str(src.onnx_path), providers=["CPUExecutionProvider"])
                r = dict(zip(src.output_names, sess.run(src.output_names, case)))
        except Exception as e:
            if isinstance(e, UsageError):  # e.g. output names that do not fit the outputs
                raise
            if i == 0:
                raise _fails_on_example(e) from e
            dropped.append(f"case {i} ({', '.join(f'{k}{list(v.shape)}' for k, v in case.items())}): "
                           f"{type(e).__name__}: {first_line(e, 200)}")
            continue
        keep.append(case)
        refs.append(r)
    return keep, refs, dropped


def _unvalidated_dynamic(src: GraphSource, cases: list[dict], dropped: list[str]) -> UsageError | None:
    """A dynamic axis the model itself rejects at every other size tried is declared but never validated."""
    for n, axes in (src.dynamic or {}).items():
        for ax, sym in axes.items():
            size = src.example_inputs[n].shape[ax]
            if not any(c[n].shape[ax] != size for c in cases):
                return UsageError(f"--dynamic {n}:{ax}={sym}: the model itself fails when {sym!r} is not {size} "
                                  f"({dropped[0] if dropped else 'no other size was tried'})",
                                  f"drop the dynamic axis {n}:{ax} (the model needs size {size} there)")
    return None


def _insensitive(cases: list[dict], refs: list[dict]) -> list[str]:
    """A caveat when the example and the random same-shape case give identical outputs: either the
    inputs did not differ (e.g. integer inputs with one value) or the outputs do not depend on them
    (e.g. a zero-initialised head) -- then validation cannot tell a right graph from a wrong one."""
    if len(refs) < 2 or any(np.shape(v) != np.shape(cases[1][k]) for k, v in cases[0].items()):
        return []
    if not all(np.array_equal(refs[0][k], refs[1][k], equal_nan=np.asarray(refs[0][k]).dtype.kind == "f")
               for k in refs[0]):
        return []
    same = [k for k in cases[0] if np.array_equal(cases[0][k], cases[1][k])]
    why = (f"input(s) {same} took a single value in the example, so the random case repeated it"
           if same else "the outputs did not change with the inputs")
    return [f"validation is weak: the example and a random input gave identical outputs ({why}); "
            "give example inputs with representative values (Python: example_inputs; CLI: a MODEL "
            "function returning (module, example_inputs))"]


def _fails_on_example(e: Exception) -> ExportError:
    return ExportError(f"the model fails on its own example inputs: {type(e).__name__}: {first_line(e)}",
                       "check the example input names, shapes and dtypes (--input NAME:SHAPE[:DTYPE])")


def _output_specs(names: list[str], refs: list[dict], cases: list[dict], inputs: list[TensorSpec]) -> list[TensorSpec]:
    sym_sizes: list[dict[str, int]] = []
    for case in cases:
        sizes: dict[str, int] = {}
        for spec in inputs:
            for ax, d in enumerate(spec.shape):
                if isinstance(d, str):
                    sizes[d] = case[spec.name].shape[ax]
        sym_sizes.append(sizes)
    specs = []
    for n in names:
        shapes = [np.shape(r[n]) for r in refs]
        dims: list[int | str] = []
        for ax, d in enumerate(shapes[0]):
            seen = [s[ax] for s in shapes]
            if all(v == d for v in seen):
                dims.append(int(d))
                continue
            match = [s for s in sym_sizes[0] if all(ss.get(s) == v for ss, v in zip(sym_sizes, seen))]
            dims.append(match[0] if match else f"{n}_dim{ax}")
        specs.append(TensorSpec(n, np.asarray(refs[0][n]).dtype.name, tuple(dims)))
    return specs


def _calibration(calib: Any, inputs: list[TensorSpec]) -> list[dict[str, np.ndarray]]:
    if calib is None:
        raise UsageError("int8 export needs calibration data", "pass --calib DATA.npz (or calib= in Python)")
    if callable(calib):
        calib = calib()
    return load_calibration(calib, inputs)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def export_graphs(graphs: dict[str, GraphSource], *, pipeline: dict | None = None,
                  inputs: list[TensorSpec] | None = None, outputs: list[TensorSpec] | None = None,
                  targets: Any = ("onnx",), out: str | Path = ".", name: str = "model", precision: Any = "fp32",
                  metadata: dict | None = None, extra_files: dict | None = None, calib: Any = None,
                  opset: int | None = None, options: dict | None = None,
                  progress: Callable[[str], None] | None = None, strict_dynamic: bool = False) -> Bundle:
    """Export one or more graphs into one bundle. Every artifact is validated against PyTorch.

    A dynamic axis no validation case could vary (the reference rejects every other size) is an error
    with ``strict_dynamic`` (``edgekit.export``), else recorded in each artifact's validation detail."""
    precisions = [p.strip() for p in precision.split(",")] if isinstance(precision, str) else list(precision)
    rows = resolve_targets(targets, precisions)
    say = stage_reporter(progress)  # None: stage lines when stderr is a terminal; False: silent
    metadata = dict(metadata or {})
    classifier = metadata.get("task") == "classification"
    options = options or {}
    asked = [n.strip().lower() for n in (targets.split(",") if isinstance(targets, str) else targets)]
    explicit = asked != ["all"]  # with "all", one target failing must not stop the others
    onnx_asked = "onnx" in asked or not explicit
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
            cases, refs, dropped = _references(src, module, make_cases(src.example_inputs, src.dynamic)
                                               + list(src.extra_cases or []))
            unvalidated = _unvalidated_dynamic(src, cases, dropped)
            if unvalidated is not None and strict_dynamic:
                raise unvalidated  # a user's model: refuse to write a spec the model cannot honour
            caveats = [f"dynamic axis not validated: {unvalidated.message}"] if unvalidated is not None else []
            caveats += _insensitive(cases, refs)
            out_specs = _output_specs(src.output_names, refs, cases, in_specs)
            graph = Graph(gname, in_specs, out_specs, {"example_shapes": {n: list(a.shape) for n, a in src.example_inputs.items()}})
            manifest.graphs[gname] = graph
            example = {f"in.{k}": v for k, v in cases[0].items()} | {f"out.{k}": v for k, v in refs[0].items()}
            if sum(a.nbytes for a in example.values()) <= VALIDATION_FILE_LIMIT:
                w.add_file(manifest, f"validation/{gname}.npz", _npz_bytes(example))
            if "int8" in precisions and calib_list is None and gname == "main":
                calib_list = _calibration(calib, in_specs)
            ctx = _GraphCtx(w, manifest, gname, graph, module, src, calib_list, opset, options, Path(tmp),
                            cases, refs, dropped, classifier, explicit, say, caveats)
            # an ONNX target added only as the base of others is built at fp32 alone
            plan = [(t, p) for t in rows for p in precisions if p in t.precisions
                    and (t.name != "onnx" or onnx_asked)]
            if any(t.name == "onnx" for t in rows) and not any(t.name == "onnx" and p == "fp32" for t, p in plan):
                plan.insert(0, (rows[0], "fp32"))  # the fp32 ONNX is the portable base of the others
            for t, p in plan:
                ctx.export_one(t, p)
        if not any(a.status in ("ok", "not-validated", "pending-build") for a in manifest.artifacts):
            reasons = "; ".join(f"{a.target}/{a.precision}: {a.status_reason}" for a in manifest.artifacts)
            raise ExportError(f"no usable artifact was produced ({reasons})", "run with --debug for details")
        single = next(iter(manifest.graphs.values()))
        manifest.inputs = list(inputs) if inputs is not None else single.inputs
        manifest.outputs = list(outputs) if outputs is not None else single.outputs
        for rel, src_file in (extra_files or {}).items():
            w.add_file(manifest, rel, src_file)
        dest = w.commit(manifest)
    return Bundle.load(dest)


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

    def __init__(self, w, manifest, gname, graph, module, src, calib_list, opset, options, tmp, cases, refs,
                 dropped, classifier, explicit, say, caveats=()):
        self.w, self.manifest, self.gname, self.graph, self.module, self.src = w, manifest, gname, graph, module, src
        self.calib_list, self.opset, self.options, self.tmp = calib_list, opset, options, tmp
        self.cases, self.refs, self.dropped, self.classifier = cases, refs, dropped, classifier
        self.explicit, self.say, self.caveats = explicit, say, list(caveats)
        try:  # exporters read shapes (and ONNX-sourced ones the values) from these, module or not
            self.tensors = {n: _torch(a) for n, a in src.example_inputs.items()}
        except ImportError:
            self.tensors = {}
        self.onnx_fp32: Path | None = Path(src.onnx_path) if src.onnx_path else None

    def export_one(self, t: Target, p: str, retry: dict | None = None, why: str = "") -> None:
        """Export, validate and stage one artifact. A module-sourced artifact failing validation is exported
        once more with ``t.retry_options`` (``retry``; ``why`` = the first attempt's failure)."""
        suffix = "" if p == "fp32" else f".{p}"
        art = Artifact(target=t.name, graph=self.gname, precision=p, path=f"{self.gname}{suffix}{t.suffix}")
        work = self.tmp / self.gname / f"{t.name}-{p}{'-retry' if retry else ''}"
        work.mkdir(parents=True, exist_ok=True)
        options = {**self.options.get(t.name, {}), **(retry or {})}
        job = ExportJob(module=self.module, example_inputs=self.tensors, input_names=list(self.src.example_inputs),
                        output_names=list(self.src.output_names), dynamic=self.src.dynamic, precision=p,
                        workdir=work, onnx_path=self.onnx_fp32, calib=self.calib_list, opset=self.opset,
                        options=options, inputs=self.graph.inputs, outputs=self.graph.outputs)
        self.say(f"[{self.gname}] exporting {t.name} {p}" + (f" again with {retry}" if retry else ""))
        try:
            # exporter libraries' chatter (FX dumps, NNCF/coremltools bars) is captured; stdout carries --json
            with quiet_noise():
                res = importlib.import_module(t.module).export(job)
        except Exception as e:  # one target's failure must not sink the others (unless it is the base ONNX)
            if self.explicit and t.name == "onnx" and not retry:
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
        art.toolchain = res.toolchain
        art.extra = {**res.extra, **({"notes": res.notes} if res.notes else {})}
        if res.status == "ok":
            self._validate(t, art, res.path)
            again = dict(t.retry_options)
            if (art.status == "failed" and not retry and again and self.module is not None
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
        staged = self.w.add(art.path, res.path)
        self.w.record(art)
        self.manifest.artifacts.append(art)
        if t.name == "onnx" and p == "fp32" and art.status == "ok":
            self.onnx_fp32 = staged

    def _validate(self, t: Target, art: Artifact, path: Path) -> None:
        self.say(f"[{self.gname}] validating {t.name} {art.precision} on {len(self.cases)} cases")
        try:
            art.validation = validate_artifact(path, t, art, self.graph, self.cases, self.refs, self.classifier)
        except EdgekitError as e:
            art.validation = Validation(passed=None, where=host(), detail={"error": str(e)})
            art.status, art.status_reason = "not-validated", f"could not run here: {e}"
            return
        v = art.validation
        if self.dropped:
            v.detail["dropped_cases"] = self.dropped
        caveats = list(self.caveats)
        if v.tolerance is not None and v.detail.get("output_scale", 1.0) <= v.tolerance:
            caveats.append(f"validation is weak: the tolerance {v.tolerance:.3g} is at least the largest |output| "
                           f"{v.detail['output_scale']:.3g}, so even an all-zero output would pass (tiny outputs, "
                           "e.g. an untrained model); validate with trained weights")
        if caveats:  # what this validation could not show; also printed with the export table
            v.detail["caveats"] = caveats
            art.extra.setdefault("notes", []).extend(caveats)
        if not v.passed:
            art.status = "failed"
            art.status_reason = (f"validation failed: {v.detail['mismatch'][0]}" if v.detail.get("mismatch") else
                                 f"validation failed: max abs err {v.max_abs_err:.3g} > tolerance {v.tolerance:.3g}"
                                 + (f"; top-1 agreement {v.detail['top1_agreement']:.3f}"
                                    if "top1_agreement" in v.detail else ""))

