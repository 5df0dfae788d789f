"""ModelSource: a PyTorch module plus everything needed to export it (example inputs, names,
dynamic axes, metadata, calibration data). Built-in models and every CLI MODEL form resolve to one.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from edgekit.exporters.adapter import adapt, as_input_array, flatten_outputs, to_tensors
from edgekit.exporters.cases import fails_on_example

from edgekit.core.errors import UsageError


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


@dataclass
class GraphSource:
    module: Any                                   # torch.nn.Module, or None when onnx_path is the source
    example_inputs: dict[str, np.ndarray]         # in the module's positional order
    output_names: list[str]
    dynamic: dict[str, dict[int, str]] | None = None
    extra_cases: list[dict[str, np.ndarray]] | None = None
    onnx_path: str | None = None


def normalize_examples(model: Any, example_inputs: Any, input_names: list[str] | None) -> dict[str, np.ndarray]:
    """dict / tuple / single tensor -> ordered {name: np.ndarray}."""
    if isinstance(example_inputs, dict):
        return {str(k): as_input_array(str(k), v) for k, v in example_inputs.items()}
    items = list(example_inputs) if isinstance(example_inputs, (tuple, list)) else [example_inputs]
    if input_names is None:
        try:
            params = [p for p in inspect.signature(model.forward).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            input_names = [p.name for p in params[:len(items)]] if len(params) >= len(items) else None
        except (TypeError, ValueError, AttributeError):
            input_names = None
        if not input_names or input_names == ["input"] * len(items):
            input_names = ["x"] if len(items) == 1 else [f"input_{i}" for i in range(len(items))]
    if len(input_names) != len(items):
        raise UsageError(f"{len(items)} example inputs but {len(input_names)} input names",
                         "give one name per example input")
    return {n: as_input_array(n, a) for n, a in zip(input_names, items)}



def default_output_names(module: Any, ex: dict[str, np.ndarray]) -> list[str]:
    import torch

    try:
        with torch.inference_mode():
            raw = adapt(module, list(ex)).raw(*to_tensors(ex, list(ex)))  # un-flattened, to read dict keys
    except Exception as e:
        raise fails_on_example(e) from e
    if isinstance(raw, tuple) and hasattr(raw, "_fields"):  # a namedtuple: name outputs after its fields
        raw = raw._asdict()
    if isinstance(raw, dict):  # dicts and transformers ModelOutputs: name outputs after their keys
        names = []
        for key, value in raw.items():
            n = len(flatten_outputs(value)) if value is not None else 0
            names += [str(key)] if n == 1 else [f"{key}_{i}" for i in range(n)]
        return names
    n_out = len(flatten_outputs(raw))
    return ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
