"""ONNX Runtime int8, built from the graph's validated fp32 ONNX artifact.

Two modes, chosen from the graph (graph_kind.onnx_attention) unless ``onnx.int8_mode`` says:
  static   Q/DQ (QuantizeLinear/DequantizeLinear pairs), per-channel int8 weights, uint8 activations
           with ranges from the calibration set (MinMax) -- the form ORT's CPU, mobile, XNNPACK,
           NNAPI and QNN execution providers run as int8 kernels. For CNNs; needs calibration data.
  dynamic  int8 weights, activations quantized at run time per tensor (MatMulInteger /
           DynamicQuantizeLinear) -- for transformers, whose activation ranges vary with the input;
           needs no data.
Both start from ``quant_pre_process`` (symbolic shape inference + ORT's graph optimizations), as ORT
recommends. Options (``--option onnx.KEY=VALUE``): ``int8_mode`` (auto | static | dynamic),
``per_channel`` (default true), ``calibrate_method`` (minmax | entropy | percentile),
``keep_float_first`` (N: the first N Conv/MatMul/Gemm nodes stay float; default 6 in static mode, 0 in
dynamic mode; 12 in the automatic retry of an int8 artifact that failed validation: targets.KEEP_FLOAT_FIRST).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from edgekit.exporters.graph_kind import onnx_attention
from edgekit.exporters.job import ExportJob, ExportResult
from edgekit.exporters.targets import KEEP_FLOAT_FIRST, KEEP_FLOAT_SHARE

from edgekit.core.errors import DataError, ExportError

MODES = ("auto", "static", "dynamic")
METHODS = ("minmax", "entropy", "percentile")
QUANTIZABLE = ("Conv", "MatMul", "Gemm")
PRE_PROCESS_TIMEOUT_S = 600  # a pre-processing pass that takes longer is skipped (it is an optimisation)


class _Reader:
    """onnxruntime CalibrationDataReader over the calibration samples."""

    def __init__(self, samples: list[dict]):
        self.it = iter(samples)

    def get_next(self):
        return next(self.it, None)


def choose_mode(model: Any, job: ExportJob) -> tuple[str, str]:
    want = str(job.options.get("int8_mode", "auto")).lower()
    if want not in MODES:
        raise ExportError(f"unknown onnx int8_mode {want!r}", f"use one of {', '.join(MODES)}")
    if want != "auto":
        return want, f"option int8_mode={want}"
    attention, why = onnx_attention(model)
    return ("dynamic", f"transformer graph ({why})") if attention else ("static", f"no attention ({why})")


def _pre_process(src: Path, dst: Path, workdir: Path) -> None:
    """ORT's quantization pre-processing (symbolic shape inference, graph optimisation, ONNX shape
    inference), run as ORT's own CLI in a child process whose current directory is the work dir: when
    symbolic inference is incomplete, ORT saves a temp model plus external data as large as the
    weights into the current directory, and changing this process's directory would affect the
    caller's other threads."""
    proc = subprocess.run([sys.executable, "-m", "onnxruntime.quantization.preprocess", "--input", str(src.resolve()),
                           "--output", str(dst.resolve())], cwd=workdir, capture_output=True, text=True,
                          timeout=PRE_PROCESS_TIMEOUT_S)
    if proc.returncode != 0 or not dst.is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"exit {proc.returncode}: {last}")


def export_int8(job: ExportJob) -> ExportResult:
    import onnx
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    if job.onnx_path is None or not Path(job.onnx_path).is_file():
        raise ExportError("ONNX int8 is built from the fp32 ONNX artifact, which is missing or failed",
                          "check the onnx fp32 row of the export table")
    mode, why = choose_mode(onnx.load(str(job.onnx_path), load_external_data=False), job)
    if mode == "static" and not job.calib:
        raise DataError(f"static int8 ONNX of this graph needs calibration data ({why})",
                        "pass --calib DATA (.npz or a directory of .npy) or calib=...; or "
                        "--option onnx.int8_mode=dynamic (weights only at rest, no data)")
    pre = job.workdir / "pre.onnx"
    out = job.workdir / "model.int8.onnx"
    try:
        _pre_process(Path(job.onnx_path), pre, job.workdir)
    except Exception as e:  # pre-processing is an optimisation: quantize the graph as it is
        pre, pre_note = Path(job.onnx_path), f"quant_pre_process skipped ({type(e).__name__}: {str(e)[:160]})"
    else:
        pre_note = None
    per_channel = bool(job.options.get("per_channel", True))
    extra: dict[str, Any] = {"source": "onnx", "int8_mode": mode, "int8_mode_reason": why}
    keep = int(job.options.get("keep_float_first", KEEP_FLOAT_FIRST if mode == "static" else 0) or 0)
    nodes = [n.name for n in onnx.load(str(pre), load_external_data=False).graph.node if n.op_type in QUANTIZABLE]
    exclude = nodes[:min(keep, len(nodes) // KEEP_FLOAT_SHARE)]
    if exclude:
        extra.update(keep_float_first=keep, float_nodes=exclude)
    if mode == "static":
        method = str(job.options.get("calibrate_method", "minmax")).lower()
        if method not in METHODS:
            raise ExportError(f"unknown onnx calibrate_method {method!r}", f"use one of {', '.join(METHODS)}")
        quantize_static(str(pre), str(out), _Reader(list(job.calib)), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=exclude,
                        calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                          "percentile": CalibrationMethod.Percentile}[method])
        extra.update(calib_samples=len(job.calib), calibrate_method=method,
                     weights="int8 per-channel" if per_channel else "int8 per-tensor", activations="uint8 static")
    else:
        quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8, per_channel=per_channel,
                         nodes_to_exclude=exclude)
        extra.update(weights="int8 per-channel" if per_channel else "int8 per-tensor", activations="dynamic (uint8)")
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    extra["quantized_nodes"] = sum(n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
                                                 "ConvInteger", "QLinearConv", "QLinearMatMul") for n in model.graph.node)
    if not extra["quantized_nodes"]:
        raise ExportError("ONNX Runtime quantized no node of this graph (no Conv/MatMul/Gemm it handles)",
                          "keep fp32/fp16 for this model, or try OpenVINO int8")
    notes = [pre_note] if pre_note else []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return ExportResult(out, toolchain={"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                                        "opset": int(opset)}, notes=notes, extra=extra)
