"""The target table: everything the CLI, export, validation and bench need to know per target.

Adding a backend = one row here + exporters/<name>.py + runtimes/<name>.py.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from edgekit.core.errors import BackendUnavailableError, UsageError

PRECISIONS = ("fp32", "fp16", "int8")
# max abs error allowed, relative to the reference output scale (max(1, max|ref|))
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "int8": 1e-1}
# minimum top-1 agreement with the reference for classifiers
MIN_AGREEMENT = {"fp32": 1.0, "fp16": 0.99, "int8": 0.99}


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

    def installed(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in self.needs)


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("onnx", ".onnx", ("fp32", "fp16"), "onnxruntime", "torch", ("torch", "onnx", "onnxruntime"),
           "edgekit.exporters.onnx", description="ONNX (torch.export/dynamo, TorchScript fallback)",
           retry_options=(("exporter", "torchscript"),)),  # dynamo graphs sometimes bake a dynamic size
    Target("openvino", ".openvino", ("fp32", "fp16", "int8"), "openvino", "openvino", ("openvino",),
           "edgekit.exporters.openvino", needs_onnx=True, description="OpenVINO IR (xml+bin), NNCF int8"),
    Target("coreml", ".mlpackage", ("fp32", "fp16", "int8"), "coreml", "coreml", ("coremltools", "torch"),
           "edgekit.exporters.coreml", description="Core ML mlprogram"),
    Target("tensorrt", ".tensorrt", ("fp32", "fp16", "int8"), "tensorrt", "tensorrt", ("onnx",),
           "edgekit.exporters.tensorrt", needs_onnx=True,
           description="TensorRT-ready ONNX + op check; engine built on the target device"),
    Target("executorch", ".pte", ("fp32", "int8"), "executorch", "executorch", ("torch", "executorch"),
           "edgekit.exporters.executorch", description="ExecuTorch .pte, XNNPACK delegate (Android/iOS apps)"),
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
