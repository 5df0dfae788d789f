"""The Python API in one place: export (needs torch), load, evaluate and personalize (torch-free on bundles).

``import edgekit`` re-exports these lazily, so importing edgekit loads neither torch nor a backend.
"""
from __future__ import annotations

import os
from typing import Any

from edgekit.core.bundle import Bundle
from edgekit.exporters.build import export_model
from edgekit.exporters.evaluate import evaluate as _evaluate
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


def evaluate(bundle: str | os.PathLike | Bundle, data: str | os.PathLike, **kwargs: Any) -> dict:
    """Accuracy of every artifact runnable here on labeled data (.npz or an image directory) and its agreement
    with the PyTorch reference (torch-free). Keywords: graph, batch, targets, progress."""
    b = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    return _evaluate(b, data, **kwargs)


eval = evaluate  # noqa: A001 - the name the docs use: edgekit.eval(bundle, data)


def personalize(source: str, data: str, out: str, **kwargs: Any) -> dict:
    """PPP: prune a gated model to a personal one from a few unlabeled samples (a gated bundle: torch-free)."""
    return personalize_any(source, data, out, **kwargs)
