"""Multi-graph models whose control flow lives in the runtime.

A pipeline bundle's manifest has ``pipeline = {"kind": K, "params": {...}}`` and several graphs.
``PIPELINES`` maps each kind to the torch-free class that runs it; the class receives the loaded
bundle, opens its graphs with :func:`edgekit.runtimes.open_graph` and implements ``run``.
"""
from __future__ import annotations

import importlib
from typing import Any

from edgekit.runtimes.registry import open_graph

from edgekit.core.bundle import Bundle
from edgekit.core.errors import BundleError, EdgekitError, first_line

PIPELINES: dict[str, str] = {
    "token_gating": "edgekit.runtimes.pipelines.tokengate:TokenGatePipeline",
    "vos_skip": "edgekit.runtimes.pipelines.vos:VOSPipeline",
}


class PipelineBase:
    """Shared plumbing: keeps the bundle, the backend choice and one Session per graph."""

    kind = ""

    def __init__(self, bundle: Bundle, backend: str = "auto", precision: str | None = None, **options: Any):
        self.bundle = bundle
        self.params = dict((bundle.manifest.pipeline or {}).get("params", {}))
        self.sessions = {g: open_graph(bundle, g, backend, precision, **options)
                         for g in bundle.manifest.graphs
                         if any(a.graph == g for a in bundle.manifest.artifacts)}
        self.backend_name = next(iter(self.sessions.values())).backend_name if self.sessions else backend
        self.inputs = bundle.manifest.inputs
        self.outputs = bundle.manifest.outputs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.run(*args, **kwargs)

    def run(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError


def load_pipeline(bundle: Bundle, backend: str = "auto", precision: str | None = None, **options: Any):
    kind = (bundle.manifest.pipeline or {}).get("kind")
    if kind not in PIPELINES:
        raise BundleError(f"bundle {bundle.root.name} declares unknown pipeline kind {kind!r}",
                          f"this edgekit runs: {', '.join(PIPELINES)}; upgrade edgekit")
    mod, cls = PIPELINES[kind].split(":")
    try:
        return getattr(importlib.import_module(mod), cls)(bundle, backend=backend, precision=precision, **options)
    except EdgekitError:
        raise
    except (KeyError, TypeError, ValueError) as e:  # the params of an untrusted manifest
        raise BundleError(f"bundle {bundle.root.name} has malformed {kind} pipeline parameters "
                          f"({type(e).__name__}: {first_line(e, 160)})", "re-export the bundle") from None
