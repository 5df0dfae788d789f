"""edgekit.runtimes — run bundles without PyTorch.

``load(path, backend="auto")`` opens a bundle and returns a :class:`Session` (or, for a bundle whose
manifest declares a pipeline, the pipeline runner). Backend libraries are imported only when a
backend is used, so an absent backend costs nothing. This package never imports torch.
"""
from __future__ import annotations

import os
from typing import Any

from edgekit.runtimes.base import BackendBase, Session
from edgekit.runtimes.pipelines import load_pipeline
from edgekit.runtimes.registry import (
    ALIASES,
    BACKENDS,
    available_backends,
    backend_class,
    open_graph,
)

from edgekit.core.bundle import Bundle

__all__ = ["load", "open_graph", "Session", "BackendBase", "BACKENDS", "ALIASES", "backend_class",
           "available_backends"]


def load(path: str | os.PathLike | Bundle, backend: str = "auto", graph: str | None = None,
         precision: str | None = None, verify: bool = True, **options: Any):
    """Open a bundle. Returns a Session, or the pipeline runner for pipeline bundles (graph=None).

    ``verify``: check the checksum of every file the session uses (the others are not read, so a
    damaged artifact that is not used does not block this one). ``allow_nonfinite=True`` (or a list
    of input names) lets float inputs carry NaN/inf, refused by default. The Session is thread-safe."""
    bundle = path if isinstance(path, Bundle) else Bundle.load(path, verify="used" if verify else False)
    if graph is None and bundle.manifest.pipeline:
        return load_pipeline(bundle, backend=backend, precision=precision, **options)
    return open_graph(bundle, graph or "main", backend, precision, **options)
