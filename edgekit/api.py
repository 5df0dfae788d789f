"""The Python API in one place: export (needs torch), load and personalize (torch-free on bundles).

``import edgekit`` re-exports these lazily, so importing edgekit loads neither torch nor a backend.
"""
from __future__ import annotations

import os
from typing import Any

from edgekit.core.bundle import Bundle
from edgekit.exporters.build import export_model
from edgekit.ppp.tasks import personalize_any
from edgekit.runtimes import load as _load


def export(model: Any, example_inputs: Any = None, **kwargs: Any) -> Bundle:
    """Export a PyTorch module (or a built-in / resolved ModelSource) to ``out/NAME.edgekit`` and validate
    every artifact against PyTorch. Keywords: targets, out, name, precision, dynamic, input_names,
    output_names, metadata, calib, opset, extra_files, options, progress (see exporters.build.export_model)."""
    return export_model(model, example_inputs, **kwargs)


def load(path: str | os.PathLike | Bundle, backend: str = "auto", **kwargs: Any):
    """Open a bundle for inference (torch-free): a Session, or the pipeline runner of a multi-graph bundle."""
    return _load(path, backend=backend, **kwargs)


def personalize(source: str, data: str, out: str, **kwargs: Any) -> dict:
    """PPP: prune a gated model to a personal one from a few unlabeled samples (a gated bundle: torch-free)."""
    return personalize_any(source, data, out, **kwargs)
