"""Core ML exporter: PyTorch -> mlprogram (.mlpackage) at fp32 / fp16 / int8-weights.

Conversion: ``ct.convert`` of a ``torch.export`` ExportedProgram first, of a TorchScript trace as the
fallback (the reason is kept). fp32 -> compute_precision FLOAT32; fp16 -> FLOAT16; int8 -> FLOAT16
compute with weights linearly quantized to int8 (``coremltools.optimize.coreml.linear_quantize_weights``,
symmetric per-channel). Dynamic axes become ``RangeDim(1, upper)``; int64 inputs travel as int32
(Core ML has no int64 arrays; the runtime casts).

Options (``job.options``): ``minimum_deployment_target`` (default "iOS16"; e.g. "iOS17", "macOS14"),
``coreml_source`` ("auto" | "exported_program" | "torchscript"), ``max_dim`` (upper bound of dynamic
dims: an int or {symbol: int}; default 64 for batch-like symbols, else max(4x example, 512)).

Numbers: Core ML predicts only on macOS. Elsewhere the saved spec is loaded and checked (IO names,
shapes and dtypes against the manifest, precision, op count) and the artifact is marked
``not-validated: numeric check needs macOS``; on macOS the common validation routine runs.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from edgekit.exporters.job import ExportJob, ExportResult
from edgekit.runtimes.coreml import import_coremltools

from edgekit.core.errors import ExportError

INSTALL = 'pip install "edgekit[coreml]"'
NOT_MAC = "numeric check needs macOS"


def _target(ct: Any, name: str) -> Any:
    t = getattr(ct.target, name, None)
    if t is None:
        known = [n for n in dir(ct.target) if n[:3] in ("iOS", "mac", "tvO", "wat", "vis")]
        raise ExportError(f"unknown Core ML deployment target {name!r}", f"choose one of {', '.join(known)}")
    return t


def upper_bound(symbol: str, example: int, given: Any = None) -> int:
    """mlprogram inputs need a finite upper bound: batch-like dims 64, others max(4x example, 512)."""
    if isinstance(given, dict):
        given = given.get(symbol)
    if given:
        return max(int(given), example)
    if "batch" in symbol.lower():
        return max(example, 64)
    return max(4 * example, 512)


def _input_types(ct: Any, job: ExportJob) -> list:
    types = []
    for n in job.input_names:
        a = job.example_inputs[n]
        axes = {int(k): sym for k, sym in (job.dynamic or {}).get(n, {}).items()}
        shape = [ct.RangeDim(lower_bound=1, default=int(d),
                             upper_bound=upper_bound(axes[ax], int(d), job.options.get("max_dim")))
                 if ax in axes else int(d) for ax, d in enumerate(a.shape)]
        np_dtype = np.dtype(str(a.dtype).replace("torch.", ""))
        dtype = {"i": np.int32, "u": np.int32, "b": np.bool_}.get(np_dtype.kind, np.float32)
        types.append(ct.TensorType(name=n, shape=ct.Shape(shape), dtype=dtype))
    return types


def _register_missing_ops() -> None:
    """Converters coremltools 9 lacks for ops current torch emits (``Tensor.new_ones`` in transformers)."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch import torch_op_registry as reg
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs
    from coremltools.converters.mil.frontend.torch.utils import NUM_TO_DTYPE_STRING
    from coremltools.converters.mil.mil import types

    if "new_ones" in getattr(reg, "_TORCH_OPS_REGISTRY", {}):
        return

    @reg.register_torch_op
    def new_ones(context, node):  # noqa: ANN001 - coremltools converter signature
        inputs = _get_inputs(context, node)
        shape = inputs[1]
        if isinstance(shape, list):
            shape = mb.concat(values=shape, axis=0) if shape else None
        elif shape is not None and tuple(shape.shape) == (0,):
            shape = None  # new_ones(()) is a scalar
        if shape is None:
            ones = mb.const(val=np.float32(1.0))
        else:
            if "int32" not in str(shape.dtype):
                shape = mb.cast(x=shape, dtype="int32")
            ones = mb.fill(shape=shape, value=1.0)
        dtype = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
        name = NUM_TO_DTYPE_STRING.get(int(dtype.val)) if dtype is not None and dtype.val is not None else None
        if name is None:  # no dtype argument: the source tensor's dtype
            name = "bool" if types.is_bool(inputs[0].dtype) else "int32" if types.is_int(inputs[0].dtype) else None
        if name in ("int64", "int16", "int8", "uint8"):
            name = "int32"
        if name and name not in ("fp32",):
            ones = mb.cast(x=ones, dtype=name)
        context.add(mb.identity(x=ones, name=node.name))


def _convert(job: ExportJob, ct: Any, precision: Any, target: Any) -> tuple[Any, dict]:
    import torch

    _register_missing_ops()
    args = tuple(job.example_inputs[n] for n in job.input_names)
    want = job.options.get("coreml_source", "auto")
    order = ("exported_program", "torchscript") if want == "auto" else (want,)
    failures: dict[str, str] = {}
    outputs = [ct.TensorType(name=s.name, dtype=np.int32 if np.dtype(s.dtype).kind in "iub" else np.float32)
               for s in job.outputs] if job.outputs else [ct.TensorType(name=n) for n in job.output_names]
    for src in order:
        try:
            if src == "exported_program":
                if job.dynamic:  # coremltools maps torch.export dims poorly; use fixed-shape EP only
                    raise ExportError("dynamic axes: using the TorchScript path, which takes RangeDim inputs")
                ep = torch.export.export(job.module, args).run_decompositions({})
                model = ct.convert(ep, outputs=outputs, convert_to="mlprogram", compute_precision=precision,
                                   minimum_deployment_target=target)
                _rename_inputs(ct, model, job)
            elif src == "torchscript":
                with torch.inference_mode(False), torch.no_grad():
                    traced = torch.jit.trace(job.module, args, strict=False, check_trace=False)
                model = ct.convert(traced, inputs=_input_types(ct, job), outputs=outputs, convert_to="mlprogram",
                                   compute_precision=precision, minimum_deployment_target=target)
            else:
                raise ExportError(f"unknown coreml_source {src!r}", "use auto, exported_program or torchscript")
        except Exception as e:  # keep the reason, try the next source
            failures[src] = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
            continue
        return model, {"source": src, **({"fallback_reason": failures} if failures else {})}
    raise ExportError(f"Core ML conversion failed: {failures}",
                      "run with --debug; Core ML lacks some ops (see coremltools' unsupported-op error)")


def _rename_inputs(ct: Any, model: Any, job: ExportJob) -> None:
    """ExportedProgram inputs are named after placeholders; give them the manifest's names."""
    spec = model._spec
    current = [i.name for i in spec.description.input]
    for old, new in zip(current, job.input_names):
        if old != new:
            ct.utils.rename_feature(spec, old, new)
    model._spec = spec  # noqa: SLF001 - coremltools' own way to rename in place


def export(job: ExportJob) -> ExportResult:
    ct = import_coremltools()
    if job.module is None:
        raise ExportError("Core ML converts from the PyTorch module; this graph has no module (ONNX source)",
                          "export from the PyTorch model, or drop --target coreml")
    target = _target(ct, str(job.options.get("minimum_deployment_target", "iOS16")))
    precision = ct.precision.FLOAT32 if job.precision == "fp32" else ct.precision.FLOAT16
    model, info = _convert(job, ct, precision, target)
    extra: dict[str, Any] = dict(info)
    if job.precision == "int8":
        import coremltools.optimize.coreml as cto

        cfg = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", weight_threshold=int(job.options.get("weight_threshold", 512))))
        model = cto.linear_quantize_weights(model, config=cfg)
        extra["weights"] = "int8 (linear_symmetric, per-channel), fp16 compute"
    model.short_description = f"edgekit export ({job.precision})"
    out = Path(job.workdir) / "model.mlpackage"
    model.save(str(out))
    from edgekit.runtimes.coreml import check_spec, inspect_spec

    from edgekit.core.bundle import Graph

    spec_info = inspect_spec(out)  # reload from disk: proves the saved package parses
    check = check_spec(spec_info, Graph("main", list(job.inputs), list(job.outputs)), job.precision)
    extra.update(minimum_deployment_target=str(job.options.get("minimum_deployment_target", "iOS16")),
                 compute_precision="fp32" if job.precision == "fp32" else "fp16", op_count=spec_info["op_count"],
                 example_shapes={n: [int(d) for d in job.example_inputs[n].shape] for n in job.input_names})
    toolchain = {"coremltools": ct.__version__, "spec_version": spec_info["spec_version"]}
    detail = {"checks": ["spec loads from the saved package", "IO names/shapes/dtypes vs manifest",
                         "precision of tensors", "op count"],
              "spec": {k: spec_info[k] for k in ("spec_version", "model_type", "opset", "inputs", "outputs",
                                                  "op_count", "tensor_dtypes", "quantized_weights")},
              "ops": spec_info["ops"], "io_check": check}
    if not check["passed"]:
        return ExportResult(out, toolchain=toolchain, status="failed",
                            status_reason="Core ML spec check failed: " + "; ".join(check["problems"][:3]),
                            extra=extra, validation_detail=detail)
    if sys.platform == "darwin":
        return ExportResult(out, toolchain=toolchain, extra=extra, validation_detail=detail)
    return ExportResult(out, toolchain=toolchain, status="not-validated", status_reason=NOT_MAC, extra=extra,
                        validation_detail=detail)
