"""ONNX exporter: torch.export (dynamo) first, the TorchScript exporter as fallback (reason kept),
then onnx.checker, optional onnxslim, optional fp16 conversion. fp16 and int8 artifacts are converted
from the graph's fp32 ONNX artifact when there is one (no second export); int8 is onnx_quant.py."""
from __future__ import annotations

import re

from edgekit.exporters.adapter import export_args, tracer_warnings
from edgekit.exporters.job import ExportJob, ExportResult
from edgekit.exporters.onnx_fusion import fused_candidate
from edgekit.exporters.onnx_quant import export_int8

from edgekit.core.errors import ExportError

DEFAULT_OPSET = 18


def _dynamo(job: ExportJob, args: tuple, shapes: tuple | None, path, opset: int) -> None:
    import logging

    import torch

    # torch.onnx logs a warning per torchvision op it cannot register; irrelevant unless torchvision is used
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    torch.onnx.export(job.module, args, str(path), input_names=job.input_names,
                      output_names=job.output_names, opset_version=opset, dynamo=True,
                      dynamic_shapes=shapes, external_data=False, verbose=False, optimize=True)


def _torchscript(job: ExportJob, args: tuple, path, opset: int) -> None:
    import torch

    axes = {n: {int(a): s for a, s in d.items()} for n, d in (job.dynamic or {}).items()}
    module = getattr(job.module, "script", None) or job.module  # a TorchScript module is exported as is
    torch.onnx.export(module, args, str(path), input_names=job.input_names,
                      output_names=job.output_names, opset_version=opset, dynamo=False,
                      dynamic_axes=axes or None, do_constant_folding=True)


def _keep_inputs(model, job: ExportJob) -> None:
    """Put back graph inputs the exporter or onnxslim dropped because the model never reads them
    (``forward(x, unused)``), in the manifest's order: the artifact must take every manifest input,
    or the runtime's feed of it fails ("Invalid input name")."""
    import numpy as np
    from onnx import helper

    have = {vi.name: vi for vi in model.graph.input}
    if not job.inputs or all(s.name in have for s in job.inputs):
        return
    init = {i.name for i in model.graph.initializer}
    keep = [vi for vi in model.graph.input if vi.name in init and vi.name not in {s.name for s in job.inputs}]
    ordered = [have.get(s.name) or helper.make_tensor_value_info(
        s.name, helper.np_dtype_to_tensor_dtype(np.dtype(s.dtype)), list(s.shape)) for s in job.inputs]
    del model.graph.input[:]
    model.graph.input.extend(ordered + keep)


def _name_dims(model, job: ExportJob) -> None:
    """Give the graph's inputs/outputs the manifest's symbolic dim names (batch, seq, ...)."""
    _keep_inputs(model, job)
    for vi, spec in [*zip(model.graph.input, job.inputs), *zip(model.graph.output, job.outputs)]:
        dims = vi.type.tensor_type.shape.dim
        if len(dims) != len(spec.shape):
            continue
        for d, s in zip(dims, spec.shape):
            if isinstance(s, str):
                d.dim_param = s


def _reason(e: BaseException) -> str:
    """The informative line of an exporter exception (torch.onnx wraps the cause in a long banner)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if "## Exception summary" in lines:
        after = lines[lines.index("## Exception summary") + 1:]
        if after:
            return after[0][:400]
    return f"{type(e).__name__}: {(lines or [''])[0][:400]}"


def _toposort(graph) -> None:
    """Reorder graph.node so every node comes after the producers of its inputs (Kahn)."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = [n for n in pending if not all(i in ready for i in n.input)]
        done = [n for n in pending if all(i in ready for i in n.input)]
        if not done:  # a cycle or a dangling input: leave the rest as it was, the checker will say
            ordered += rest
            break
        for n in done:
            ready.update(n.output)
        ordered += done
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def _inline_copy(src, dst) -> None:
    """Copy an ONNX file into one self-contained file: weights kept as external data beside the source
    (``model.onnx.data``, which torch.onnx and Optimum write) are read from there and stored inline,
    since the bundle's artifact is the one .onnx file."""
    import onnx

    try:
        model = onnx.load(str(src))  # loads external data relative to the source file
    except Exception as e:
        raise ExportError(f"cannot read {src} with its external data ({type(e).__name__}: {str(e)[:200]})",
                          "keep the .onnx file next to the data files it names") from None
    if model.ByteSize() > 2**31 - 1:
        raise ExportError(f"{src} holds {model.ByteSize() / 2**30:.1f} GB of weights; a single ONNX file is "
                          "limited to 2 GB", "export a smaller model (bundles do not carry external data yet)")
    onnx.save(model, str(dst))


def _from_fp32(job: ExportJob) -> ExportResult:
    """fp16 from the graph's validated fp32 ONNX (the same graph, not a second export)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    path = job.workdir / "model.onnx"
    model = convert_float_to_float16(onnx.load(str(job.onnx_path)), keep_io_types=True)
    _toposort(model.graph)  # the converter appends its input casts at the end
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return ExportResult(path, toolchain={"onnx": onnx.__version__, "opset": int(opset)},
                        extra={"source": "onnx", "converted_from": "the fp32 ONNX artifact of this graph"})


def export(job: ExportJob) -> ExportResult:
    import onnx
    import torch

    if job.precision == "int8":
        return export_int8(job)
    if (job.precision == "fp16" and job.onnx_path is not None and job.module is not None
            and "exporter" not in job.options):
        return _from_fp32(job)
    path = job.workdir / "model.onnx"
    opset = job.opset or DEFAULT_OPSET
    notes: list[str] = []
    extra: dict = {}
    if job.module is None:  # the source is an ONNX file already
        _inline_copy(job.onnx_path, path)
        extra["exporter"] = "source-onnx"
    else:
        args, shapes = export_args(job.example_inputs, job.input_names, job.dynamic)
        want = job.options.get("exporter", "dynamo")
        if getattr(job.module, "script", None) is not None and "exporter" not in job.options:
            want = "torchscript"  # torch.export cannot take a TorchScript module
        try:
            if want != "dynamo":
                raise RuntimeError("a TorchScript module (torch.export cannot take one)"
                                   if getattr(job.module, "script", None) is not None and "exporter" not in job.options
                                   else f"exporter {want!r} requested")
            _dynamo(job, args, shapes, path, opset)
            extra["exporter"] = "dynamo"
        except Exception as e:  # any failure of the new exporter: fall back, keep the reason
            reason = _reason(e)
            extra.update(exporter="torchscript", fallback_reason=reason)
            if getattr(job.module, "script", None) is None:
                notes.append(f"dynamo exporter not used ({reason}); used the TorchScript exporter")
            path.unlink(missing_ok=True)
            try:
                with tracer_warnings() as traced:
                    _torchscript(job, args, path, opset)
                if traced:
                    extra["tracer_warnings"] = traced
                    notes.append(f"TorchScript tracing baked in Python control flow/values ({len(traced)} tracer "
                                 "warning(s)): the graph may only be valid for inputs like the example")
            except Exception as e2:
                raise ExportError(f"ONNX export failed with both exporters: dynamo: {reason}; "
                                  f"torchscript: {_reason(e2)}",
                                  "run with --debug for the trace; simplify data-dependent control flow") from e2
    model = onnx.load(str(path))
    _name_dims(model, job)
    if job.options.get("slim", True) and job.module is not None:
        try:
            import onnxslim

            slim = onnxslim.slim(model)
            if slim is not None:
                model = slim
                extra["onnxslim"] = onnxslim.__version__
        except ImportError:
            notes.append("onnxslim not installed; graph not slimmed")
        except Exception as e:  # slimming is an optimisation; never fail the export on it
            notes.append(f"onnxslim skipped: {type(e).__name__}: {str(e)[:200]}")
    _keep_inputs(model, job)  # onnxslim drops unused inputs too
    if job.precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(model, keep_io_types=True)
        _toposort(model.graph)  # the converter appends its input casts at the end
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    opset_used = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    toolchain = {"torch": torch.__version__} if job.module is not None else {}
    if "onnxslim" in extra:
        toolchain["onnxslim"] = extra.pop("onnxslim")
    alternative = None
    if job.precision == "fp32" and job.module is not None:
        alternative, fusion = fused_candidate(path, job)
        if alternative is not None or "BERT" in fusion["why"] or "model_type" in fusion["why"]:
            extra["fusion"] = fusion
    return ExportResult(path, toolchain={**toolchain, "onnx": onnx.__version__, "opset": int(opset_used)},
                        notes=notes, extra=extra, alternative=alternative)
