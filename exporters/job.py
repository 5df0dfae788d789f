"""What an exporter receives and returns (one contract for every exporters/<target>.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class ExportJob:
    module: Any                                  # torch.nn.Module with positional inputs, tuple outputs; None for ONNX sources
    example_inputs: dict[str, Any]               # name -> torch.Tensor, in positional order
    input_names: list[str]
    output_names: list[str]
    dynamic: dict[str, dict[int, str]] | None
    precision: str
    workdir: Path
    onnx_path: Path | None = None                # fp32 ONNX of this graph (built first)
    calib: list[dict[str, np.ndarray]] | None = None
    opset: int | None = None
    options: dict = field(default_factory=dict)  # target-specific (e.g. coreml minimum_deployment_target)
    inputs: list = field(default_factory=list)   # TensorSpecs of the graph
    outputs: list = field(default_factory=list)
    shared: dict = field(default_factory=dict)   # per-graph work exporters may reuse (a converted model)
    metadata: dict = field(default_factory=dict) # the bundle's metadata (task, model_type, ...)


@dataclass
class ExportResult:
    path: Path                                   # file or directory inside job.workdir
    toolchain: dict = field(default_factory=dict)
    status: str = "ok"                           # "ok" -> validated numerically here; else the reason below
    status_reason: str | None = None
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    validation_detail: dict = field(default_factory=dict)  # checks done when numbers cannot be run here
    alternative: Path | None = None              # another graph of the same artifact (e.g. ORT-fused): build.py
                                                 # validates and times both and keeps the faster validated one
