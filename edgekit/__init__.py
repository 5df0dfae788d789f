"""edgekit — take PyTorch models to edge devices.

``edgekit.export(...)`` (needs torch) writes a validated bundle; ``edgekit.load(...)`` (torch-free)
runs it. Importing this package imports neither torch nor any backend library.
"""
from __future__ import annotations

from typing import Any

from edgekit.core.version import __version__

__all__ = ["export", "load", "eval", "personalize", "Bundle", "TensorSpec", "__version__"]


def export(model: Any, example_inputs: Any = None, **kwargs: Any):
    """Export a PyTorch model to a bundle; see :func:`edgekit.api.export`."""
    from edgekit.api import export as _export
    return _export(model, example_inputs, **kwargs)


def load(path: Any, backend: str = "auto", **kwargs: Any):
    """Open a bundle for inference (torch-free); see :func:`edgekit.api.load`."""
    from edgekit.runtimes import load as _load
    return _load(path, backend=backend, **kwargs)


def eval(bundle: Any, data: Any, **kwargs: Any) -> dict:  # noqa: A001 - edgekit.eval, like `edgekit eval`
    """Accuracy of every artifact on labeled data vs the PyTorch reference (torch-free); see
    :func:`edgekit.api.evaluate`."""
    from edgekit.api import evaluate as _evaluate
    return _evaluate(bundle, data, **kwargs)


def personalize(source: str, data: str, out: str, **kwargs: Any) -> dict:
    """PPP personalization; see :func:`edgekit.api.personalize`."""
    from edgekit.api import personalize as _personalize
    return _personalize(source, data, out, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "Bundle":
        from edgekit.core.bundle import Bundle
        return Bundle
    if name == "TensorSpec":
        from edgekit.core.specs import TensorSpec
        return TensorSpec
    raise AttributeError(f"module 'edgekit' has no attribute {name!r}")
