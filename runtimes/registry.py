"""The backend registry: which runtime backend runs which artifact, and opening one graph as a Session.

Backend libraries are imported only when a backend is used. Torch-free.
"""
from __future__ import annotations

import importlib
import time
import warnings
from typing import Any

from edgekit.runtimes.autoselect import (
    UNMEASURED,
    auto_mode,
    cache_key,
    example_feeds,
    label,
    measure,
    read_cache,
    write_cache,
)
from edgekit.runtimes.base import BackendBase, Session

from edgekit.core.bundle import Artifact, Bundle
from edgekit.core.errors import BackendUnavailableError, BundleError, UsageError

# backend name -> (module:class, artifact targets it can run, pip extra). Order = "auto" preference.
BACKENDS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "tensorrt": ("edgekit.runtimes.tensorrt:TensorRTBackend", ("tensorrt",), "tensorrt"),
    "coreml": ("edgekit.runtimes.coreml:CoreMLBackend", ("coreml",), "coreml"),
    "openvino": ("edgekit.runtimes.openvino:OpenVINOBackend", ("openvino", "onnx"), "openvino"),
    "onnxruntime": ("edgekit.runtimes.ort:OrtBackend", ("onnx",), ""),
    "executorch": ("edgekit.runtimes.executorch:ExecuTorchBackend", ("executorch",), "executorch"),
}
ALIASES = {"ort": "onnxruntime", "ov": "openvino", "trt": "tensorrt"}
PRECISION_ORDER = ("fp32", "fp16", "int8w", "int8")

def backend_class(name: str) -> type[BackendBase]:
    name = ALIASES.get(name, name)
    if name not in BACKENDS:
        raise UsageError(f"unknown backend {name!r}", f"choose one of: auto, {', '.join(BACKENDS)}")
    ref, _targets, extra = BACKENDS[name]
    mod, cls = ref.split(":")
    try:
        return getattr(importlib.import_module(mod), cls)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("edgekit"):
            raise BackendUnavailableError(f"backend {name!r} is not part of this edgekit build",
                                          "upgrade edgekit") from None
        raise BackendUnavailableError(f"backend {name!r} needs {e.name}, which is not installed",
                                      f'pip install "edgekit[{extra}]"' if extra else f"pip install {e.name}") from None


def available_backends() -> list[str]:
    out = []
    for name in BACKENDS:
        try:
            if backend_class(name).available():
                out.append(name)
        except BackendUnavailableError:
            pass
    return out


class SubstitutionWarning(UserWarning):
    """``load`` runs another artifact than one the bundle was exported with (that one failed)."""


def _native(name: str, art: Artifact) -> bool:
    return BACKENDS[name][1][0] == art.target


def _candidates(arts: list[Artifact], name: str, precisions: list[str], statuses=("ok", "not-validated")) -> list[Artifact]:
    return [a for t in BACKENDS[name][1] for p in precisions for a in arts
            if a.target == t and a.precision == p and a.status in statuses]


def _runnable(name: str) -> bool:
    try:
        return backend_class(name).available()
    except BackendUnavailableError:
        return False


def auto_candidates(bundle: Bundle, graph: str, precision: str | None = None) -> list[tuple[str, Artifact]]:
    """Validated artifacts of ``graph`` with the backend of their own format, where it can run here,
    in the fixed order of BACKENDS (then ONNX on a backend of another format, as a last resort)."""
    arts = [a for a in bundle.manifest.artifacts if a.graph == graph]
    precisions = [precision] if precision else list(PRECISION_ORDER)
    out = [(n, a) for n in BACKENDS for a in _candidates(arts, n, precisions, ("ok",)) if _native(n, a) and _runnable(n)]
    if not out:
        out = [(n, a) for n in BACKENDS for a in _candidates(arts, n, precisions, ("ok",)) if _runnable(n)]
    return out


def _no_artifact(bundle: Bundle, graph: str, arts: list[Artifact]) -> BackendUnavailableError:
    have = ", ".join(sorted({f"{a.target}/{a.precision}({a.status})" for a in arts}))
    missing = [n for n in BACKENDS if not _runnable(n) and any(a.status == "ok" and _native(n, a) for a in arts)]
    fixes = []
    for n in missing:
        problem, fix = backend_class(n).unavailable_reason()
        fixes.append(f"{fix} ({problem})")
    return BackendUnavailableError(f"no validated artifact in {bundle.root.name} can run on this machine "
                                   f"(artifacts: {have}; backends here: {', '.join(available_backends()) or 'none'})",
                                   "; or ".join(fixes) if fixes else
                                   "install the backend for one of the artifacts, or pass backend=NAME explicitly")


def _graph_artifacts(bundle: Bundle, graph: str) -> list[Artifact]:
    arts = [a for a in bundle.manifest.artifacts if a.graph == graph]
    if not arts:
        raise BundleError(f"bundle {bundle.root.name} has no artifact for graph {graph!r}",
                          f"graphs with artifacts: {sorted({a.graph for a in bundle.manifest.artifacts})}")
    return arts


def _pick(bundle: Bundle, graph: str, backend: str, precision: str | None) -> tuple[str, Artifact]:
    """The fixed-order choice (``auto`` without measuring) or the artifact an explicit backend runs."""
    arts = _graph_artifacts(bundle, graph)
    if backend == "auto":
        cands = auto_candidates(bundle, graph, precision)
        if not cands:
            raise _no_artifact(bundle, graph, arts)
        return cands[0]
    name = ALIASES.get(backend, backend)
    cls = backend_class(name)
    found = _candidates(arts, name, [precision] if precision else list(PRECISION_ORDER))
    if not found:
        have = ", ".join(sorted({f"{a.target}/{a.precision}" + ("" if a.status == "ok" else f" ({a.status})")
                                 for a in arts}))
        unusable = [a for a in _candidates(arts, name, [precision] if precision else list(PRECISION_ORDER),
                                           ("failed", "skipped")) if a.status_reason]
        if unusable:
            a = unusable[0]
            raise BundleError(f"{a.target}/{a.precision} in {bundle.root.name} is {a.status}: {a.status_reason}",
                              "pick another artifact (edgekit info lists them), or re-export with "
                              f"--target {a.target} --precision {a.precision} --force")
        raise BundleError(f"bundle {bundle.root.name} has no {name}-runnable artifact"
                          + (f" at precision {precision}" if precision else "") + f" (it has: {have})",
                          f"re-export with --target {BACKENDS[name][1][0]}" + (f" --precision {precision}" if precision else ""))
    if not cls.available():
        raise BackendUnavailableError(*cls.unavailable_reason())
    return name, found[0]


def warn_substitution(bundle: Bundle, graph: str, name: str, art: Artifact, backend: str) -> str | None:
    """Say so when an artifact the bundle was exported with failed and another one runs instead
    (with ``precision=`` that artifact would be an error instead: see _pick)."""
    failed = [a for a in bundle.manifest.artifacts if a.graph == graph and a.status == "failed"
              and a is not art and (backend == "auto" or a.target in BACKENDS[name][1])]
    if not failed:
        return None
    what = "; ".join(f"{a.target}/{a.precision} failed at export ({(a.status_reason or 'no reason recorded')[:200]})"
                     for a in failed[:3])
    msg = (f"{bundle.root.name}: {what}; running {art.target}/{art.precision} on {name} instead "
           f"(pass precision= to require one)")
    warnings.warn(msg, SubstitutionWarning, stacklevel=4)
    return msg


def open_graph(bundle: Bundle, graph: str = "main", backend: str = "auto", precision: str | None = None,
               **options: Any) -> Session:
    """Open one graph of a loaded bundle as a Session. ``auto`` opens the fastest validated artifact
    measured here (runtimes/autoselect.py); ``session.choice`` says what was picked and why."""
    allow_nonfinite = options.pop("allow_nonfinite", False)
    arts = _graph_artifacts(bundle, graph)
    g = bundle.graph(graph)
    if backend == "auto":
        name, art, impl, choice = _auto(bundle, graph, precision, options, arts)
    else:
        name, art = _pick(bundle, graph, backend, precision)
        impl, choice = None, {"how": "explicit", "picked": label(name, art)}
    note = warn_substitution(bundle, graph, name, art, backend) if precision is None else None
    if note:
        choice["warning"] = note
    impl = impl or backend_class(name)(bundle.path(art), art, g, **options)
    sess = Session(impl, g.inputs, g.outputs, art, allow_nonfinite=allow_nonfinite)
    sess.choice = choice
    return sess


def _auto(bundle: Bundle, graph: str, precision: str | None, options: dict,
          arts: list[Artifact]) -> tuple[str, Artifact, Any, dict]:
    cands = auto_candidates(bundle, graph, precision)
    if not cands:
        raise _no_artifact(bundle, graph, arts)
    first = next((c for c in cands if c[0] in UNMEASURED), None)
    if len(cands) == 1 or first or auto_mode() == "order":
        name, art = first or cands[0]
        why = ("the only validated artifact that runs here" if len(cands) == 1 else
               f"{name} is preferred without measuring" if first else "EDGEKIT_AUTO=order: the fixed backend order")
        return name, art, None, {"how": "order", "picked": label(name, art), "why": why}
    backends = sorted({n for n, _ in cands})
    key = cache_key(bundle, graph, precision, backends)
    hit = read_cache(key)
    byname = {label(n, a): (n, a) for n, a in cands}
    if hit and hit["picked"] in byname:
        name, art = byname[hit["picked"]]
        return name, art, None, {**hit, "how": "cached"}
    g = bundle.graph(graph)
    best, impl, table = measure(cands, lambda n, a: backend_class(n)(bundle.path(a), a, g, **options),
                                example_feeds(bundle, graph))
    if best is None:  # nothing ran in the measurement: let the fixed order open (and explain) the first
        name, art = cands[0]
        return name, art, None, {"how": "order", "picked": label(name, art), "why": "measuring failed",
                                 "table": table}
    name, art = cands[best]
    record = {"picked": label(name, art), "table": table, "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
              "why": f"fastest of {len(table)} validated artifacts on the stored example"}
    record["cache"] = write_cache(key, record)
    return name, art, impl, {**record, "how": "measured"}
