"""ModelSource: a PyTorch module plus everything needed to export it (example inputs, names,
dynamic axes, metadata, calibration data). Built-in models and every CLI MODEL form resolve to one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


@dataclass
class ModelSource:
    module: Any  # torch.nn.Module (or an ExportedProgram's module)
    example_inputs: dict[str, np.ndarray]
    output_names: list[str]
    dynamic: dict[str, dict[int, str]] | None = None
    metadata: dict = field(default_factory=dict)
    calibration: Callable[[], list[dict[str, np.ndarray]]] | None = None
    description: str = ""
    name: str = "model"
    onnx_path: str | None = None  # set when the source is an ONNX file (no PyTorch reference)
    # multi-graph models (pipelines) export themselves: exporter(out, targets, name, progress) -> Bundle
    exporter: Callable[..., Any] | None = None
    extra_files: dict[str, Any] | None = None  # bundle name -> local path, copied into the bundle (tokenizers)
