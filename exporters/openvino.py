"""OpenVINO exporter: PyTorch -> OpenVINO IR (model.xml + model.bin) at fp32 / fp16 / int8.

Conversion order (the first that works is used; every failure reason is kept in ``extra``):
  1. ``ov.convert_model(<the graph's validated fp32 ONNX>)``  (built first: the target needs ONNX)
  2. ``ov.convert_model(torch.export.export(module, ...))``  (ExportedProgram, dynamic dims kept)
  3. ``ov.convert_model(module, example_input=...)``          (TorchScript tracing inside OpenVINO)
The ONNX comes first because it is 3-8x faster to convert (no second torch.export; EfficientNet-Lite0
3 s vs 25 s, MiniLM 8 s vs 25 s) and measured equal: the same ops and latency, the same NNCF int8/int8w
accuracy (MiniLM sentence-embedding cosine 0.9906 vs 0.9911, 0.9986 vs 0.9985).
Options (``job.options``): ``openvino_source`` = "auto" | "exported_program" | "module" | "onnx".

The converted fp32 model is kept per graph (``job.shared``), so fp16/int8/int8w artifacts of the same
graph do not convert again.

Precision: fp32 keeps fp32 weights; fp16 compresses weights to fp16 (``save_model(compress_to_fp16=
True)``; compute precision is the device's); int8 is NNCF post-training quantization
(``nncf.quantize``) on the calibration set (required), with ``ModelType.TRANSFORMER`` for graphs
with attention in any form (graph_kind.ov_attention; option ``model_type`` = transformer | default
overrides; ``keep_float_first`` = N leaves the first N Convolution/MatMul ops in float: default 6 outside
transformer mode, 12 in the automatic retry of an int8 artifact that failed validation); int8w is NNCF's data-free weight-only int8 (``nncf.compress_weights``, option
``weights_mode`` = int8_asym (default) | int8_sym), activations stay float.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.exporters.adapter import export_args, tracer_warnings
from edgekit.exporters.graph_kind import ov_attention
from edgekit.exporters.job import ExportJob, ExportResult
from edgekit.exporters.targets import KEEP_FLOAT_FIRST, KEEP_FLOAT_SHARE
from edgekit.runtimes.openvino import import_openvino

from edgekit.core.errors import BackendUnavailableError, DataError, ExportError

INSTALL = 'pip install "edgekit[openvino]"'
SOURCES = ("onnx", "exported_program", "module")


def _from_exported_program(job: ExportJob, ov: Any) -> Any:
    import torch

    args, shapes = export_args(job.example_inputs, job.input_names, job.dynamic)
    ep = torch.export.export(job.module, args, dynamic_shapes=shapes)
    return ov.convert_model(ep)


def _from_module(job: ExportJob, ov: Any) -> Any:
    args = tuple(job.example_inputs[n] for n in job.input_names)
    inputs = []
    for n, a in zip(job.input_names, args):
        shape = [(-1 if int(ax) in {int(k) for k in (job.dynamic or {}).get(n, {})} else int(d))
                 for ax, d in enumerate(a.shape)]
        inputs.append(ov.PartialShape(shape))
    return ov.convert_model(job.module, example_input=args, input=inputs)


def _from_onnx(job: ExportJob, ov: Any) -> Any:
    if job.onnx_path is None or not Path(job.onnx_path).is_file():
        raise ExportError("no ONNX artifact to convert from", "export with --target onnx,openvino")
    return ov.convert_model(str(job.onnx_path))


def convert(job: ExportJob, ov: Any) -> tuple[Any, dict]:
    """Run the conversion chain; returns (ov.Model, info with the source used and fallback reasons)."""
    want = job.options.get("openvino_source", "auto")
    if want != "auto" and want not in SOURCES:
        raise ExportError(f"unknown openvino_source {want!r}", f"choose auto or one of {', '.join(SOURCES)}")
    order = SOURCES if want == "auto" else (want,)
    if want == "auto" and (job.onnx_path is None or not Path(job.onnx_path).is_file()):
        order = SOURCES[1:]
    if job.module is None:
        order = ("onnx",)
    failures: dict[str, str] = {}
    fns = {"exported_program": _from_exported_program, "module": _from_module, "onnx": _from_onnx}
    for src in order:
        try:
            model = fns[src](job, ov)
        except Exception as e:  # any converter failure: try the next source, keep the reason
            failures[src] = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
            continue
        if len(model.inputs) != len(job.input_names) or len(model.outputs) != len(job.output_names):
            failures[src] = (f"converted graph has {len(model.inputs)} inputs/{len(model.outputs)} outputs, "
                             f"expected {len(job.input_names)}/{len(job.output_names)}")
            continue
        info = {"source": src}
        if failures:
            info["fallback_reason"] = failures
        return model, info
    raise ExportError(f"OpenVINO conversion failed from every source: {failures}",
                      "run with --debug; export ONNX first and check it loads in onnxruntime")


def _name_ports(model: Any, job: ExportJob) -> None:
    for port, name in zip(model.inputs, job.input_names):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, job.output_names):
        port.get_tensor().set_names({name})


def _pin_static_dims(model: Any, job: ExportJob, ov: Any) -> str | None:
    """Converters may leave every dim dynamic (``convert_model(ExportedProgram)`` gives [?,3,?,?] for a
    fixed 1x3x224x224 input); make the IR's input shapes the manifest's: fixed dims fixed, symbolic -1.
    Returns a note when OpenVINO cannot reshape the graph (it then stays as converted)."""
    want = {port: ov.PartialShape([-1 if isinstance(d, str) else d for d in spec.shape])
            for port, spec in zip(model.inputs, job.inputs)}
    if all(port.get_partial_shape() == shape for port, shape in want.items()):
        return None
    try:
        model.reshape(want)
    except Exception as e:  # noqa: BLE001 - OpenVINO raises generic errors; a dynamic IR still runs
        return f"input shapes left as converted ({type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]})"
    return None


def _nncf():
    try:
        import nncf
    except ImportError as e:
        raise BackendUnavailableError(f"NNCF is not installed ({e.name or e}); it quantizes to int8", INSTALL) from None
    return nncf


def model_type(model: Any, job: ExportJob) -> tuple[bool, str]:
    """(transformer?, why): the ``model_type`` option when given, else attention found in the graph."""
    want = job.options.get("model_type")
    if want is not None:
        if want not in ("transformer", "default"):
            raise ExportError(f"unknown openvino model_type {want!r}", "use openvino.model_type=transformer or default")
        return want == "transformer", f"option model_type={want}"
    return ov_attention(model)


def quantize_int8(model: Any, job: ExportJob) -> tuple[Any, dict]:
    if not job.calib:
        raise DataError("int8 OpenVINO export needs calibration data",
                        "pass --calib DATA (.npz or a directory of .npy) or calib=... in the Python API")
    nncf = _nncf()
    samples = list(job.calib)
    kwargs: dict[str, Any] = {"subset_size": len(samples)}
    transformer, why = model_type(model, job)
    if transformer:
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    if job.options.get("preset") == "mixed":
        kwargs["preset"] = nncf.QuantizationPreset.MIXED
    keep = int(job.options.get("keep_float_first", 0 if transformer else KEEP_FLOAT_FIRST) or 0)
    ops = [op.get_friendly_name() for op in model.get_ordered_ops()
           if op.get_type_name() in ("Convolution", "GroupConvolution", "MatMul")]
    float_ops = ops[:min(keep, len(ops) // KEEP_FLOAT_SHARE)]
    if float_ops:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=float_ops)
    names = list(job.input_names)
    dataset = nncf.Dataset(samples, lambda s: {n: s[n] for n in names})
    qmodel = nncf.quantize(model, dataset, **kwargs)
    return qmodel, {"nncf": nncf.__version__, "calib_samples": len(samples),
                    "model_type": "transformer" if transformer else "default", "model_type_reason": why,
                    **({"keep_float_first": keep, "float_nodes": float_ops} if float_ops else {})}


def compress_int8w(model: Any, job: ExportJob) -> tuple[Any, dict]:
    """Weight-only int8 (no data): weights of MatMul/Conv/Embedding-like ops stored int8 per channel."""
    nncf = _nncf()
    mode = str(job.options.get("weights_mode", "int8_asym")).upper()
    if mode not in ("INT8_ASYM", "INT8_SYM"):
        raise ExportError(f"unknown openvino weights_mode {mode.lower()!r}", "use int8_asym or int8_sym")
    cmodel = nncf.compress_weights(model, mode=getattr(nncf.CompressWeightsMode, mode))
    return cmodel, {"nncf": nncf.__version__, "weights_mode": mode.lower()}


def _converted(job: ExportJob, ov: Any) -> tuple[Any, dict]:
    """The fp32 conversion of this graph, once per graph and conversion source (a clone per artifact)."""
    key = f"openvino:{job.options.get('openvino_source', 'auto')}"
    if key not in job.shared:
        with tracer_warnings() as traced:  # converting from the module traces it
            model, info = convert(job, ov)
        if traced:
            info["tracer_warnings"] = traced
        _name_ports(model, job)
        job.shared[key] = (model, info)
    else:
        info = {**job.shared[key][1], "reused": "conversion of this graph made for another precision"}
    return job.shared[key][0].clone(), dict(info)


def export(job: ExportJob) -> ExportResult:
    ov = import_openvino()
    if job.precision == "int8" and not job.calib:  # before the (slow) conversion
        raise DataError("int8 OpenVINO export needs calibration data",
                        "pass --calib DATA (.npz or a directory of .npy) or calib=... in the Python API")
    model, info = _converted(job, ov)
    toolchain = {"openvino": ov.get_version().split("-")[0]}
    extra: dict[str, Any] = dict(info)
    notes = [f"OpenVINO converted from {src} failed ({why}); fell back"
             for src, why in info.get("fallback_reason", {}).items()]
    if job.precision in ("int8", "int8w"):
        model, qinfo = (quantize_int8 if job.precision == "int8" else compress_int8w)(model, job)
        toolchain["nncf"] = qinfo.pop("nncf")
        extra.update(qinfo)
    # after NNCF: calibration samples may be batch-1 slices of a fixed-batch input
    pin_note = _pin_static_dims(model, job, ov) if len(job.inputs) == len(model.inputs) else None
    if pin_note:
        notes.append(pin_note)
    out = Path(job.workdir) / "openvino"
    out.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(out / "model.xml"), compress_to_fp16=(job.precision == "fp16"))
    extra["example_shapes"] = {n: [int(d) for d in job.example_inputs[n].shape] for n in job.input_names}
    extra["ops"] = len(model.get_ops())
    extra["weights"] = {"fp32": "fp32", "fp16": "fp16 (compressed)", "int8": "int8 (NNCF PTQ)",
                        "int8w": "int8 weight-only (NNCF compress_weights)"}[job.precision]
    return ExportResult(out, toolchain=toolchain, notes=notes, extra=extra)
