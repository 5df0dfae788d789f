"""The backend registry: which runtime backend runs which artifact, and opening one graph as a Session.

Backend libraries are imported only when a backend is used. Torch-free.
"""
from __future__ import annotations

import importlib
from typing import Any

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
PRECISION_ORDER = ("fp32", "fp16", "int8")

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


def _pick(bundle: Bundle, graph: str, backend: str, precision: str | None) -> tuple[str, Artifact]:
    arts = [a for a in bundle.manifest.artifacts if a.graph == graph]
    if not arts:
        raise BundleError(f"bundle {bundle.root.name} has no artifact for graph {graph!r}",
                          f"graphs with artifacts: {sorted({a.graph for a in bundle.manifest.artifacts})}")
    precisions = [precision] if precision else list(PRECISION_ORDER)

    def candidates(name: str) -> list[Artifact]:
        targets = BACKENDS[name][1]
        found = [a for t in targets for p in precisions for a in arts
                 if a.target == t and a.precision == p and a.status in ("ok", "not-validated")]
        return found

    if backend == "auto":
        # validated artifacts only; a backend's own format first (openvino IR before ONNX-on-openvino)
        order = [(n, BACKENDS[n][1][0]) for n in BACKENDS] + [(n, t) for n in BACKENDS for t in BACKENDS[n][1][1:]]
        for name, target in order:
            ok = [a for a in candidates(name) if a.status == "ok" and a.target == target]
            if ok:
                try:
                    if backend_class(name).available():
                        return name, ok[0]
                except BackendUnavailableError:
                    continue
        have = ", ".join(sorted({f"{a.target}/{a.precision}({a.status})" for a in arts}))
        raise BackendUnavailableError(f"no validated artifact in {bundle.root.name} can run on this machine "
                                      f"(artifacts: {have}; backends here: {', '.join(available_backends()) or 'none'})",
                                      "install the backend for one of the artifacts, or pass backend=NAME explicitly")
    name = ALIASES.get(backend, backend)
    cls = backend_class(name)
    found = candidates(name)
    if not found:
        have = ", ".join(sorted({f"{a.target}/{a.precision}" for a in arts}))
        raise BundleError(f"bundle {bundle.root.name} has no {name}-runnable artifact"
                          + (f" at precision {precision}" if precision else "") + f" (it has: {have})",
                          f"re-export with --target {BACKENDS[name][1][0]}" + (f" --precision {precision}" if precision else ""))
    if not cls.available():
        raise BackendUnavailableError(*cls.unavailable_reason())
    return name, found[0]


def open_graph(bundle: Bundle, graph: str = "main", backend: str = "auto", precision: str | None = None,
               **options: Any) -> Session:
    """Open one graph of a loaded bundle as a Session."""
    name, art = _pick(bundle, graph, backend, precision)
    g = bundle.graph(graph)
    impl = backend_class(name)(bundle.path(art), art, g, **options)
    return Session(impl, g.inputs, g.outputs, art)
