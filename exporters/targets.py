"""The target table: everything the CLI, export, validation and bench need to know per target.

Adding a backend = one row here + exporters/<name>.py + runtimes/<name>.py.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.core.errors import BackendUnavailableError, UsageError

PRECISIONS = ("fp32", "fp16", "int8", "int8w")
# below float32's smallest normal number runtimes may flush values to zero (FTZ/DAZ): the output scale an
# fp tolerance is relative to never goes lower than this
SCALE_FLOOR = float(np.finfo(np.float32).tiny)


@dataclass(frozen=True)
class Judge:
    """How validation judges an artifact of one precision against PyTorch (docs/backends.md).

    fp32/fp16: every output's max |error| <= rel_tol x max(that output's max |PyTorch value|, SCALE_FLOOR).
    int8/int8w: class-score outputs (2-D float [batch, classes >= 2], or every rank-2 output when the user
    says task=classification) by top-1 agreement with PyTorch and PyTorch's top-1 inside the artifact's
    top-5; every other output by its signal-to-quantization-noise ratio (sum ref^2 / sum err^2, in dB, over
    all judged cases) and the smallest per-sample cosine similarity; outputs shaped [batch, seq, ...] of a
    model with a [batch, seq] attention-mask input are judged at the real tokens only. NaN/inf where
    PyTorch's values are finite (or the reverse), a raising case or a wrong shape fail every precision."""
    rel_tol: float | None = None
    top1: float | None = None
    top5: float | None = None
    sqnr_db: float | None = None
    cos_min: float | None = None


# SQNR 17 dB is the noise level at which the cosine of a signal with uncorrelated noise is 0.99; 20 dB: 0.995.
# SQNR holds the aggregate; cos_min bounds the worst single sample, which drifts further at int8: on 32
# held-out sentences, all-MiniLM-L6-v2 OpenVINO int8 (transformer mode; the same as optimum-intel's static
# int8, mean cosine 0.9945 there) has mean cosine 0.996 and a worst sentence at 0.982-0.989
JUDGES = {
    "fp32": Judge(rel_tol=1e-4),
    "fp16": Judge(rel_tol=1e-2),
    "int8": Judge(top1=0.90, top5=0.99, sqnr_db=17.0, cos_min=0.98),
    "int8w": Judge(top1=0.90, top5=0.99, sqnr_db=20.0, cos_min=0.995),
}
TOLERANCE = {p: j.rel_tol for p, j in JUDGES.items() if j.rel_tol is not None}
# int8 artifacts are judged on the last HOLDOUT share of the calibration set (calibrated on the rest)
# when it has at least HOLDOUT_MIN samples; smaller sets calibrate and judge on every sample (said so).
# Half: min/max and NNCF statistics settle within a few dozen samples (64 vs 256 calibration crops gave
# the same EfficientNet-Lite0 int8), while a top-1 agreement judged on 13 samples cannot tell 0.83 from 0.9
HOLDOUT, HOLDOUT_MIN = 0.5, 10
# inputs of graphs whose trace baked in Python control flow are also validated at these multiples of
# the example (float inputs), plus the calibration samples: the evidence that the baked path holds
MAGNITUDES = (-1.0, 0.01, 10.0, 100.0)
# CNN-mode int8 (ORT static, NNCF default mode) leaves the first KEEP_FLOAT_FIRST quantizable layers
# (Conv/MatMul/Gemm in graph order: stem, first depthwise/projection, the most sensitive ones) in float;
# an int8 artifact failing validation is exported once more with INT8_RETRY_KEEP of them in float
# (Target.int8_retry). EfficientNet-Lite0, top-1 agreement with PyTorch on 256 crops of held-out photos,
# ORT / OpenVINO: all layers int8 0.84 / 0.80; first 3 in float 0.90 / 0.91, first 4 0.92 / 0.89,
# first 6 0.92 / 0.92 (PyTorch's top-1 in the int8 top-5: >= 0.996 from 3 on); ORT int8 latency vs
# fp32 0.46 (all) / 0.60 (4); OpenVINO 0.43 / 0.48
KEEP_FLOAT_FIRST, INT8_RETRY_KEEP = 6, 12
KEEP_FLOAT_SHARE = 4  # ... but never more than a quarter of a graph's quantizable layers (small nets stay int8)


@dataclass(frozen=True)
class Target:
    name: str
    suffix: str                 # artifact path suffix inside the bundle (a file or a directory)
    precisions: tuple[str, ...]
    backend: str                # runtime backend that runs (and validates) the artifact
    extra: str                  # pip extra that brings the exporter's libraries
    needs: tuple[str, ...]      # modules the exporter imports
    module: str                 # exporter module: export(job) -> ExportResult
    needs_onnx: bool = False    # built from (or beside) the fp32 ONNX artifact of the same graph
    description: str = ""
    # exporter options to retry with, once, when an artifact exported from a PyTorch module fails
    # validation (unless the user set those options or the first attempt already used them)
    retry_options: tuple[tuple[str, str], ...] = ()
    # precision -> what the artifact is at that precision (shown in docs/backends.md and `edgekit targets`)
    modes: tuple[tuple[str, str], ...] = ()
    calib_needed: tuple[str, ...] = ()  # precisions that cannot be built without calibration data
    # exporter options to retry an int8 artifact with, once, when it fails validation: keep the first
    # quantizable layers (the most sensitive ones in CNNs: stem, first depthwise/projection) in float
    int8_retry: tuple[tuple[str, Any], ...] = ()

    def installed(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in self.needs)

    def mode(self, precision: str) -> str:
        return dict(self.modes).get(precision, precision)

    def retry_for(self, precision: str) -> dict:
        return dict(self.int8_retry if precision == "int8" else self.retry_options)


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("onnx", ".onnx", ("fp32", "fp16", "int8"), "onnxruntime", "torch", ("torch", "onnx", "onnxruntime"),
           "edgekit.exporters.onnx", description="ONNX (torch.export/dynamo, TorchScript fallback)",
           retry_options=(("exporter", "torchscript"),),  # dynamo graphs sometimes bake a dynamic size
           modes=(("fp32", "float32; BERT-family graphs fused with ONNX Runtime's transformer optimizer "
                           "where that validates and runs faster"),
                  ("fp16", "float16 weights and compute, float32 inputs/outputs"),
                  ("int8", "ONNX Runtime int8: static Q/DQ, per-channel weights, calibrated (CNNs; what ORT "
                           "mobile/XNNPACK/NNAPI/QNN execute); dynamic int8 for transformer graphs (no data)")),
           int8_retry=(("keep_float_first", INT8_RETRY_KEEP),)),
    Target("openvino", ".openvino", ("fp32", "fp16", "int8", "int8w"), "openvino", "openvino", ("openvino",),
           "edgekit.exporters.openvino", needs_onnx=True, description="OpenVINO IR (xml+bin), NNCF int8",
           modes=(("fp32", "float32 IR"), ("fp16", "float16-compressed weights, f32 compute on CPU"),
                  ("int8", "NNCF post-training quantization of weights and activations, calibrated; "
                           "transformer mode for graphs with attention"),
                  ("int8w", "NNCF weight-only int8 (compress_weights), no data needed")),
           calib_needed=("int8",), int8_retry=(("keep_float_first", INT8_RETRY_KEEP),)),
    Target("coreml", ".mlpackage", ("fp32", "fp16", "int8"), "coreml", "coreml", ("coremltools", "torch"),
           "edgekit.exporters.coreml", description="Core ML mlprogram"),
    Target("tensorrt", ".tensorrt", ("fp32", "fp16", "int8"), "tensorrt", "tensorrt", ("onnx",),
           "edgekit.exporters.tensorrt", needs_onnx=True,
           description="TensorRT-ready ONNX + op check; engine built on the target device",
           calib_needed=("int8",)),
    Target("executorch", ".pte", ("fp32", "int8"), "executorch", "executorch", ("torch", "executorch"),
           "edgekit.exporters.executorch", description="ExecuTorch .pte, XNNPACK delegate (Android/iOS apps)",
           modes=(("fp32", "float32, XNNPACK-delegated"),
                  ("int8", "PT2E quantization with the XNNPACK quantizer (per-channel weights, static "
                           "activations), calibrated")),
           calib_needed=("int8",)),
)}


def resolve_targets(spec: str | list[str] | tuple[str, ...], precisions: list[str]) -> list[Target]:
    """Parse ``onnx,openvino`` / ``all`` into Target rows, ONNX first (others may build from it)."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip().lower() for n in names if n.strip()]
    for p in precisions:
        if p not in PRECISIONS:
            raise UsageError(f"unknown precision {p!r}", f"choose from {', '.join(PRECISIONS)}")
    if names == ["all"]:
        rows = [t for t in TARGETS.values() if t.installed() and any(p in t.precisions for p in precisions)]
    else:
        rows = []
        for n in names:
            if n not in TARGETS:
                raise UsageError(f"unknown target {n!r}", f"choose from {', '.join(TARGETS)} or all")
            t = TARGETS[n]
            # like "all": a target is built at the asked precisions it supports (-t onnx,openvino
            # -p fp16,int8 = onnx fp16 + openvino fp16/int8); one supporting none of them is a mistake
            if not any(p in t.precisions for p in precisions):
                bad = [p for p in precisions if p not in t.precisions]
                raise UsageError(f"target {n} does not support precision {bad[0]}",
                                 f"{n} supports {', '.join(t.precisions)}")
            if not t.installed():
                missing = [m for m in t.needs if importlib.util.find_spec(m) is None]
                raise BackendUnavailableError(f"target {n} needs {', '.join(missing)}, which is not installed",
                                              f'pip install "edgekit[{t.extra}]"')
            rows.append(t)
    if not rows:
        raise UsageError(f"no target to export to (asked: {spec})", "install a backend extra or name a target")
    need_onnx = any(t.needs_onnx for t in rows)
    if need_onnx and TARGETS["onnx"] not in rows:
        rows.append(TARGETS["onnx"])  # built anyway as the source of the others
    rows.sort(key=lambda t: (t.name != "onnx",))
    return list(dict.fromkeys(rows))


PIPELINE_TARGETS = ("onnx", "openvino", "executorch")  # pipelines run on these runtimes
# (pipeline kind, target) pairs whose graphs do not export: why, for the error and the docs
PIPELINE_UNSUPPORTED = {
    ("token_gating", "executorch"): "its encoder-layer graphs have two dynamic dims (batch, seq) in reshapes, "
                                    "which XNNPACK's reshape cannot take (executorch 1.5.1)",
}


def pipeline_targets(targets: Any, kind: str | None = None) -> tuple[str, ...]:
    """``all`` means every pipeline-capable target installed here (that the pipeline ``kind``'s graphs
    export to); otherwise the names given."""
    names = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else list(targets)
    if names == ["all"]:
        return tuple(t for t in PIPELINE_TARGETS if TARGETS[t].installed() and (kind, t) not in PIPELINE_UNSUPPORTED)
    bad = [n for n in names if n not in PIPELINE_TARGETS]
    if bad:
        raise UsageError(f"multi-graph models export to {', '.join(PIPELINE_TARGETS)}, not {bad[0]}",
                         f"use --target {','.join(PIPELINE_TARGETS)}")
    for n in names:
        if (kind, n) in PIPELINE_UNSUPPORTED:
            ok = [t for t in PIPELINE_TARGETS if (kind, t) not in PIPELINE_UNSUPPORTED]
            raise UsageError(f"{kind} bundles do not export to {n}: {PIPELINE_UNSUPPORTED[kind, n]}",
                             f"use --target {','.join(ok)}")
    return tuple(names)
