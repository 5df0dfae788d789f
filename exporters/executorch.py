"""ExecuTorch exporter: PyTorch -> ``.pte`` program with the XNNPACK delegate, at fp32 or int8.

The ``.pte`` is what an Android or iOS app loads with ExecuTorch's ``Module`` (docs/mobile.md);
XNNPACK is the CPU delegate those apps link. Here the same file is validated numerically through
ExecuTorch's Python runtime (``executorch.runtime``) by the one validation routine.

fp32: ``torch.export`` -> ``to_edge_transform_and_lower(XnnpackPartitioner)`` -> ``.pte``.
int8: PT2E post-training quantization with ExecuTorch's ``XNNPACKQuantizer`` (symmetric int8,
      per-channel weights, activation ranges observed on the model's calibration data), then
      ``convert_pt2e`` -> export -> the same lowering. Ops XNNPACK does not take stay on ExecuTorch's
      portable kernels (listed in ``extra.portable_ops``).

Dynamic axes: ExecuTorch plans memory for an upper bound, so each dynamic dim is exported as
``Dim(min=1, max=N)``. The bound the program really planned (read back from the saved program) is
recorded in ``extra.dynamic_bounds`` {symbol: [1, N]}; the runtime refuses larger sizes by name.
Default N: batch-like symbols max(64, 2x example), others max(512, 4x example); option ``max_dim``
(an int or {symbol: int}) sets it.

Options (``--option executorch.KEY=VALUE`` / ``options={"executorch": {...}}``): ``max_dim``,
``per_channel`` (int8 weights, default true), ``relu6_observer`` (int8, default true: see
``_relu6_observed_after_clamp``).

Core ML delegate: ExecuTorch's Core ML backend lowers to a ``.pte`` that runs only on Apple
devices (like the coreml target, it cannot be executed on Linux); it is not built here -- use the
``coreml`` target for Apple's own format, or this XNNPACK ``.pte``, which runs on iOS as well.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from edgekit.exporters.adapter import dim_symbol
from edgekit.exporters.job import ExportJob, ExportResult
from edgekit.runtimes.executorch import INSTALL, METHOD, planned_bounds

from edgekit.core.errors import BackendUnavailableError, DataError, ExportError, first_line

DELEGATE = "XnnpackBackend"
CALIB_CHUNK = 16  # calibration samples per observer call


def _import_toolchain() -> dict[str, Any]:
    try:
        import torch
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except ImportError as e:
        raise BackendUnavailableError(f"the executorch target needs {e.name or e}, which is not installed",
                                      INSTALL) from None
    return {"torch": torch, "partitioner": XnnpackPartitioner, "lower": to_edge_transform_and_lower}


@contextlib.contextmanager
def _no_conv_batch_guard(torch: Any):
    """XNNPACK's channels-last pass re-runs convolutions on fake tensors; with mkldnn/nnpack enabled,
    torch's conv backend choice then guards ``batch < 16`` and narrows a dynamic batch range to 15.
    Both are off while exporting and lowering (they only pick host kernels; the graph is the same)."""
    with torch.backends.mkldnn.flags(enabled=False), torch.backends.nnpack.flags(enabled=False):
        yield


@contextlib.contextmanager
def _relu6_observed_after_clamp(enabled: bool):
    """XNNPACKQuantizer (executorch 1.5.1) fuses only relu into conv/linear patterns; a ReLU6
    (aten.hardtanh) after a conv then shares the conv's output observer, so ReLU6 nets (MobileNetV2,
    EfficientNet-Lite) get an activation scale sized for the pre-clamp range. Annotating hardtanh like
    relu puts the observer after the clamp (XNNPACK fuses the clamp into the conv's output range)."""
    if not enabled:
        yield
        return
    import torch
    from executorch.backends.xnnpack.quantizer import xnnpack_quantizer_utils as utils

    original = utils.is_relu_node
    clamps = (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default)

    def is_relu_node(node: Any) -> bool:
        return original(node) or (node.op == "call_function" and node.target in clamps)

    utils.is_relu_node = is_relu_node
    try:
        yield
    finally:
        utils.is_relu_node = original


def default_bound(symbol: str, example: int, given: Any = None) -> int:
    """Upper bound of a dynamic dim; covers the validation cases (up to 2x / 4x the example)."""
    if isinstance(given, dict):
        given = given.get(symbol)
    if given:
        return max(int(given), example)
    return max(2 * example, 64) if "batch" in symbol.lower() else max(4 * example, 512)


def _export_args(job: ExportJob, torch: Any) -> tuple[tuple, Any, dict[str, int]]:
    """Example args (dynamic axes traced at size >= 2: torch.export specialises 0/1), bounded
    ``dynamic_shapes`` and the bound asked for each symbol."""
    args, shapes, bounds, dims = [], [], {}, {}
    for n in job.input_names:
        a = job.example_inputs[n]
        axes = {int(k): s for k, s in (job.dynamic or {}).get(n, {}).items()}
        for ax in axes:
            if a.shape[ax] < 2:
                a = torch.cat([a, a], dim=ax)
        args.append(a)
        spec = {}
        for ax, sym in axes.items():
            if sym not in dims:
                bounds[sym] = default_bound(sym, int(job.example_inputs[n].shape[ax]), job.options.get("max_dim"))
                dims[sym] = torch.export.Dim(dim_symbol(sym), min=1, max=max(bounds[sym], int(a.shape[ax])))
            spec[ax] = dims[sym]
        shapes.append(spec or None)
    return tuple(args), ((tuple(shapes),) if dims else None), bounds


def _calib_groups(job: ExportJob, bounds: dict[str, int]) -> list[list[dict]]:
    """Calibration samples in groups stacked along a shared dynamic axis 0 (observers cost per call, so
    fewer, larger calls calibrate faster with the same statistics); one sample per group otherwise."""
    axes = {n: {int(a): sym for a, sym in ((job.dynamic or {}).get(n) or {}).items()} for n in job.input_names}
    syms = {axes[n].get(0) for n in job.input_names}
    chunk = min(CALIB_CHUNK, *(bounds[s] for s in syms)) if None not in syms else 1
    groups: list[list[dict]] = []
    for sample in job.calib:
        last = groups[-1] if groups else None
        if (last and len(last) < chunk and sum(g[job.input_names[0]].shape[0] for g in last)
                + sample[job.input_names[0]].shape[0] <= chunk
                and all(sample[n].shape[1:] == last[0][n].shape[1:] for n in job.input_names)):
            last.append(sample)
        else:
            groups.append([sample])
    return groups


def _quantize(job: ExportJob, tc: dict, args: tuple, shapes: Any, bounds: dict[str, int]) -> tuple[Any, dict]:
    """PT2E: export -> prepare (XNNPACKQuantizer) -> calibrate -> convert; returns the Q/DQ module."""
    torch = tc["torch"]
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    per_channel = _flag(job.options.get("per_channel", True))
    relu6 = _flag(job.options.get("relu6_observer", True))
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=per_channel))
    gm = torch.export.export(job.module, args, dynamic_shapes=shapes).module()
    with _relu6_observed_after_clamp(relu6):
        prepared = prepare_pt2e(gm, quantizer)
    with torch.no_grad():
        for group in _calib_groups(job, bounds):
            prepared(*(torch.from_numpy(np.ascontiguousarray(np.concatenate([g[n] for g in group])))
                       for n in job.input_names))
    info = {"quantizer": "XNNPACKQuantizer (PT2E), symmetric int8",
            "weights": "int8 per-channel" if per_channel else "int8 per-tensor",
            "activations": "int8 per-tensor (calibrated)", "calib_samples": len(job.calib),
            "relu6_observer_after_clamp": relu6}
    return convert_pt2e(prepared), info


def _flag(v: Any) -> bool:
    return v if isinstance(v, bool) else str(v).strip().lower() not in ("0", "false", "no", "off")


def _op_split(program: Any) -> tuple[int, dict[str, int]]:
    """(delegate calls, {op: count} of the ops left on portable kernels) of a lowered program."""
    ops: Counter = Counter()
    delegated = 0
    for node in program.exported_program().graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        name = str(node.target)
        if "executorch_call_delegate" in name:
            delegated += 1
            continue
        # compute ops only: not getitem, memory planning (alloc/view) or symbolic sizes (sym_size)
        op = name.split("::")[-1].split(".")[-2] if type(node.target).__name__ == "OpOverload" else ""
        if op and not op.startswith("sym_"):
            ops[op] += 1
    return delegated, dict(ops)


def _check_runtime(program: Any, job: ExportJob) -> None:
    """This host's runtime has a kernel for every op left outside the delegates (ops such as aten::sort
    export but have no kernel in the pip runtime: the program would not load), and the IO counts fit."""
    from executorch.runtime import Runtime

    runtime = Runtime.get()
    plan = program.executorch_program.execution_plan[0]
    ops = sorted({f"{o.name}.{o.overload}" if o.overload else o.name for o in plan.operators})
    known = set(runtime.operator_registry.operator_names)
    missing = [o for o in ops if o not in known and not o.startswith("executorch_prim::")]
    if missing:
        raise ExportError(f"the ExecuTorch runtime has no kernel for {', '.join(missing)} (XNNPACK does not take "
                          "it either), so the program cannot load", "replace that op in the model, or export to "
                          "onnx/openvino")
    meta = runtime.load_program(program.buffer).metadata(METHOD)
    if meta.num_inputs() != len(job.input_names) or meta.num_outputs() != len(job.output_names):
        raise ExportError(f"the ExecuTorch program has {meta.num_inputs()} inputs/{meta.num_outputs()} outputs, "
                          f"the graph {len(job.input_names)}/{len(job.output_names)}",
                          "take one tensor per input and return a flat tuple of tensors")


def _check(job: ExportJob) -> None:
    if job.module is None or getattr(job.module, "script", None) is not None:
        what = "an ONNX file" if job.module is None else "a TorchScript module, which torch.export cannot take"
        raise ExportError(f"ExecuTorch exports from a PyTorch nn.Module; this source is {what}",
                          "export from the PyTorch model, or drop --target executorch")
    if job.precision == "int8" and not job.calib:
        raise DataError("int8 ExecuTorch export needs calibration data",
                        "pass --calib DATA (.npz or a directory of .npy) or calib=... in the Python API")


def export(job: ExportJob) -> ExportResult:
    _check(job)
    tc = _import_toolchain()
    torch = tc["torch"]
    extra: dict[str, Any] = {"method": METHOD, "delegate": DELEGATE}
    with _no_conv_batch_guard(torch):
        args, shapes, asked = _export_args(job, torch)
        try:
            module = job.module
            if job.precision == "int8":
                module, qinfo = _quantize(job, tc, args, shapes, asked)
                extra["quantization"] = qinfo
            # the Q/DQ GraphModule takes the inputs as separate parameters, the adapted module as *args
            ep = torch.export.export(module, args, dynamic_shapes=shapes[0] if module is not job.module and shapes
                                     else shapes)
        except Exception as e:  # torch.export's own error types (data-dependent control flow, ...)
            fix = ("the model bounds a dynamic dim below the exported maximum "
                   f"({', '.join(f'{k} <= {v}' for k, v in asked.items())}): set --option executorch.max_dim=N"
                   if "Constraints violated" in str(e) else
                   "ExecuTorch needs a graph torch.export can capture (no data-dependent Python control flow); "
                   "run with --debug for the trace")
            raise ExportError(f"torch.export failed: {type(e).__name__}: {first_line(e)}", fix) from None
        program = tc["lower"](ep, partitioner=[tc["partitioner"]()]).to_executorch()
    _check_runtime(program, job)
    out = Path(job.workdir) / "model.pte"
    out.write_bytes(program.buffer)
    delegated, portable = _op_split(program)
    bounds = planned_bounds(out, job.inputs)
    notes = []
    for sym, (lo, hi) in bounds.items():
        if hi < asked.get(sym, hi):
            notes.append(f"dynamic dim {sym!r}: lowering narrowed the bound to {hi} (asked {asked[sym]})")
    if portable:
        notes.append(f"ops outside the XNNPACK delegate run on ExecuTorch's portable kernels: "
                     f"{', '.join(f'{k} x{v}' for k, v in sorted(portable.items()))}")
    if not delegated:
        notes.append("XNNPACK took no part of this graph: everything runs on portable kernels (slow)")
    extra.update(delegated_calls=delegated, portable_ops=portable, dynamic_bounds=bounds,
                 example_shapes={n: [int(d) for d in job.example_inputs[n].shape] for n in job.input_names},
                 weights={"fp32": "fp32", "int8": "int8 (PT2E, XNNPACKQuantizer)"}[job.precision])
    return ExportResult(out, toolchain=_versions(torch), notes=notes, extra=extra)


def _versions(torch: Any) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"torch": torch.__version__.split("+")[0]}
    for pkg in ("executorch", "torchao"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out

