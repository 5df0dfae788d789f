"""TensorRT exporter: a TensorRT-ready ONNX directory; the engine itself is built on the target.

The artifact is a directory holding
  model.onnx        fp32 graph (TensorRT 10 builds fp32/fp16/int8 engines from it with builder flags)
  model_fp16.onnx   fp16 graph with fp32 I/O (precision fp16; TensorRT 11 is strongly typed and takes
                    its precision from the graph)
  model_qdq.onnx    int8 Q/DQ graph, symmetric, zero point 0 as TensorRT requires (precision int8;
                    TensorRT 11, or TensorRT 10 without a calibrator)
  calib.npz         the calibration set (precision int8; TensorRT 10's IInt8EntropyCalibrator2)
  trt.json          profiles (min/opt/max from the dynamic axes), files + sha256, op check per version

Options (``job.options``): ``trt_version`` (10 or 11, default 10: the version whose op support
decides the status), ``profiles`` ({symbol: (min, opt, max)}), ``calib_samples`` (how many
calibration samples calib.npz keeps for TensorRT 10's calibrator, default 32; the Q/DQ graph is
calibrated on all of them).

Engine build/run is NOT executed here (no NVIDIA GPU, TensorRT not installable on our machines):
the artifact is marked ``not-validated`` with that reason. The fp16/Q/DQ graphs are run with
onnxruntime as a *proxy* check of the graph (recorded as such; it says nothing about TensorRT).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from edgekit.exporters.job import ExportJob, ExportResult
from edgekit.exporters.trt_ops import DEFAULT_TRT_MAJOR, TRT_SUPPORT, check_onnx_ops
from edgekit.runtimes.trt_cache import derive_profiles

from edgekit.core.errors import DataError, ExportError

NOT_RUN = ("TensorRT engine build/run not executed here (no NVIDIA GPU/TensorRT on this machine); "
           "build it on the target: edgekit build-engine BUNDLE (or on first edgekit.load)")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Reader:
    """onnxruntime CalibrationDataReader over the calibration samples."""

    def __init__(self, samples: list[dict[str, np.ndarray]]):
        self.it = iter(samples)

    def get_next(self):
        return next(self.it, None)


def write_qdq(src: Path, dst: Path, samples: list[dict[str, np.ndarray]]) -> None:
    """Static int8 Q/DQ quantization in TensorRT's form: symmetric int8, zero points 0, per-channel weights."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    quantize_static(str(src), str(dst), _Reader(samples), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                   "AddQDQPairToWeight": False})


def write_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True))
    model.topological_sort()  # the converter appends its input casts after their consumers
    onnx.checker.check_model(model.model)
    onnx.save(model.model, str(dst))


def proxy_check(path: Path, job: ExportJob) -> dict:
    """Run a graph with onnxruntime on the example input against the PyTorch module (a graph check only)."""
    import onnxruntime as ort

    feeds = {n: job.example_inputs[n].detach().cpu().numpy() for n in job.input_names}
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(list(job.output_names), feeds)
    except Exception as e:  # a proxy only: report, never fail the export on it
        return {"file": path.name, "ran": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    out = {"file": path.name, "ran": True, "runner": f"onnxruntime {ort.__version__} (proxy, not TensorRT)"}
    if job.module is not None:
        import torch

        with torch.inference_mode():
            ref = job.module(*[job.example_inputs[n] for n in job.input_names])
        errs, scale = [], 0.0
        for r, g in zip(ref, got):
            r = r.detach().cpu().numpy().astype(np.float64)
            errs.append(float(np.abs(r - np.asarray(g, np.float64)).max()) if r.size else 0.0)
            scale = max(scale, float(np.abs(r).max()) if r.size else 0.0)
        out.update(max_abs_err=max(errs), output_scale=scale)
    return out


def export(job: ExportJob) -> ExportResult:
    import onnx

    if job.onnx_path is None or not Path(job.onnx_path).is_file():
        raise ExportError("the TensorRT target builds on the fp32 ONNX artifact, which is missing",
                          "export with --target onnx,tensorrt and check that the ONNX export succeeded")
    major = int(job.options.get("trt_version", DEFAULT_TRT_MAJOR))
    out = Path(job.workdir) / "tensorrt"
    out.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(job.onnx_path))
    onnx.save(model, str(out / "model.onnx"))
    files = {"fp32": "model.onnx"}
    checks = {str(m): check_onnx_ops(model, m) for m in sorted(TRT_SUPPORT)}
    if str(major) not in checks:
        checks[str(major)] = check_onnx_ops(model, major)
    example_shapes = {n: [int(d) for d in job.example_inputs[n].shape] for n in job.input_names}
    profiles = derive_profiles(job.inputs, example_shapes, job.options.get("profiles"))
    detail: dict[str, Any] = {"checks": ["op support per TensorRT version", "opset range", "profiles derived"]}
    if job.precision == "fp16":
        write_fp16(out / "model.onnx", out / "model_fp16.onnx")
        files["fp16"] = "model_fp16.onnx"
    elif job.precision == "int8":
        if not job.calib:
            raise DataError("int8 TensorRT export needs calibration data",
                            "pass --calib DATA (.npz or a directory of .npy) or calib=... in the Python API")
        from edgekit.exporters.calib import save_calibration

        keep = int(job.options.get("calib_samples", 32))  # bundle size: the TRT 10 calibrator gets a subset
        save_calibration(list(job.calib)[:keep], out / "calib.npz")
        files["calib"] = "calib.npz"
        write_qdq(out / "model.onnx", out / "model_qdq.onnx", list(job.calib))
        files["qdq"] = "model_qdq.onnx"
        checks[f"{major}_qdq"] = check_onnx_ops(onnx.load(str(out / "model_qdq.onnx")), major)
    graph_file = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": "model_qdq.onnx"}[job.precision]
    detail["onnx_proxy"] = proxy_check(out / graph_file, job)
    plan = {"format": "edgekit.trt", "precision": job.precision, "target_trt_major": major, "files": files,
            "sha256": {f: _sha(out / f) for f in files.values()}, "profiles": profiles,
            "example_shapes": example_shapes, "op_check": checks, "engine": NOT_RUN}
    (out / "trt.json").write_text(json.dumps(plan, indent=2))
    main = checks[str(major)]
    bad = list(main["unsupported"]) + list(checks.get(f"{major}_qdq", {}).get("unsupported", []))
    extra = {"trt_version_checked": major, "profiles": profiles, "files": files, "example_shapes": example_shapes,
             "op_check": {k: {"unsupported": v["unsupported"], "opset": v["opset"], "opset_ok": v["opset_ok"]}
                          for k, v in checks.items()},
             "engine_built": False}
    toolchain = {"onnx": onnx.__version__, "trt_op_table": main["source"]}
    if bad or not main["opset_ok"]:
        names = ", ".join(f"{b['node']} ({b['op_type']})" for b in bad[:10]) + (" ..." if len(bad) > 10 else "")
        reason = (f"TensorRT {major} ONNX parser cannot take: {names}" if bad else
                  f"opset {main['opset']} outside TensorRT {major}'s range {main['opset_range']}")
        detail["unsupported"] = bad
        return ExportResult(out, toolchain=toolchain, status="failed", status_reason=reason, extra=extra,
                            validation_detail=detail)
    return ExportResult(out, toolchain=toolchain, status="not-validated", status_reason=NOT_RUN, extra=extra,
                        validation_detail=detail)
