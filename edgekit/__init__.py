"""edgekit — take PyTorch models to edge devices.

``edgekit.export(...)`` (needs torch) writes a validated bundle; ``edgekit.load(...)`` (torch-free)
runs it. Importing this package imports neither torch nor any backend library.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["export", "load", "Bundle", "TensorSpec", "__version__"]


def export(model: Any, example_inputs: Any = None, **kwargs: Any):
    """Export a PyTorch model to a bundle; see :func:`edgekit.api.export`."""
    from edgekit.api import export as _export
    return _export(model, example_inputs, **kwargs)


def load(path: Any, backend: str = "auto", **kwargs: Any):
    """Open a bundle for inference (torch-free); see :func:`edgekit.runtimes.load`."""
    from edgekit.runtimes import load as _load
    return _load(path, backend=backend, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "Bundle":
        from edgekit.bundle import Bundle
        return Bundle
    if name == "TensorSpec":
        from edgekit.specs import TensorSpec
        return TensorSpec
    raise AttributeError(f"module 'edgekit' has no attribute {name!r}")
