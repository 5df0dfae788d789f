"""Core ML backend (macOS only for predictions) and the spec checks that run anywhere.

``CoreMLBackend`` wraps ``coremltools.models.MLModel.predict``; Core ML itself exists only on
macOS, so ``available()`` is False elsewhere. ``inspect_spec`` / ``check_spec`` read the saved
.mlpackage's spec (works on Linux) and compare its IO with the manifest: what the exporter records
when a numeric check cannot run.
Options: ``compute_units`` = "ALL" (default) | "CPU_ONLY" | "CPU_AND_GPU" | "CPU_AND_NE".
Thread safety: Core ML does not document ``MLModel.predict`` as safe to call concurrently, so
calls on one backend are serialized with a lock (open one session per thread for parallelism).
"""
from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from edgekit.runtimes.base import BackendBase

from edgekit.core.bundle import Artifact, Graph
from edgekit.core.errors import BackendUnavailableError

INSTALL = 'pip install "edgekit[coreml]"'
# numpy dtype of the manifest -> Core ML multiArray dtypes that carry it (int64 travels as int32).
COMPATIBLE = {"float32": ("FLOAT32",), "float16": ("FLOAT16", "FLOAT32"), "int64": ("INT32",),
              "int32": ("INT32",), "bool": ("INT32", "FLOAT32"), "float64": ("FLOAT32", "DOUBLE")}
_NP_OF = {"FLOAT32": np.float32, "FLOAT16": np.float16, "INT32": np.int32, "DOUBLE": np.float64}


def import_coremltools():
    try:
        import coremltools
    except ImportError as e:
        raise BackendUnavailableError(f"coremltools is not installed ({e.name or e})", INSTALL) from None
    return coremltools


def _array_type(feature: Any) -> tuple[str, list | None]:
    from coremltools.proto import FeatureTypes_pb2 as ft

    t = feature.type
    if t.WhichOneof("Type") != "multiArrayType":
        return t.WhichOneof("Type") or "unknown", None
    m = t.multiArrayType
    dtype = ft.ArrayFeatureType.ArrayDataType.Name(m.dataType)
    shape: list | None = list(m.shape) or None
    if m.WhichOneof("ShapeFlexibility") == "shapeRange":
        shape = [[int(r.lowerBound), int(r.upperBound)] if r.lowerBound != r.upperBound else int(r.lowerBound)
                 for r in m.shapeRange.sizeRanges]
    return dtype, shape


def inspect_spec(path: Path) -> dict:
    """IO, op histogram and tensor precisions of a saved .mlpackage / .mlmodel (no Core ML needed)."""
    ct = import_coremltools()
    model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    io = {}
    for kind, feats in (("inputs", spec.description.input), ("outputs", spec.description.output)):
        io[kind] = [{"name": f.name, "dtype": _array_type(f)[0], "shape": _array_type(f)[1]} for f in feats]
    ops: dict[str, int] = {}
    dtypes: dict[str, int] = {}
    kind = spec.WhichOneof("Type")
    if kind == "mlProgram":
        from coremltools.proto import MIL_pb2

        fn = spec.mlProgram.functions["main"]
        block = fn.block_specializations[fn.opset]
        for op in block.operations:
            ops[op.type] = ops.get(op.type, 0) + 1
            for out in op.outputs:
                if out.type.WhichOneof("type") == "tensorType":
                    name = MIL_pb2.DataType.Name(out.type.tensorType.dataType)
                    dtypes[name] = dtypes.get(name, 0) + 1
        opset = fn.opset
    else:
        opset = None
    compute_ops = {k: v for k, v in ops.items() if not k.startswith("const")}
    return {"spec_version": int(spec.specificationVersion), "model_type": kind, "opset": opset,
            **io, "op_count": sum(compute_ops.values()), "ops": ops, "tensor_dtypes": dtypes,
            "quantized_weights": sum(v for k, v in ops.items() if k.startswith("constexpr_")),
            "metadata": dict(spec.description.metadata.userDefined)}


def check_spec(info: Mapping[str, Any], graph: Graph, precision: str) -> dict:
    """Compare an inspected spec with the manifest's IO and the requested precision."""
    problems: list[str] = []
    for kind, specs in (("inputs", graph.inputs), ("outputs", graph.outputs)):
        got = info[kind]
        if [g["name"] for g in got] != [s.name for s in specs]:
            problems.append(f"{kind} names {[g['name'] for g in got]} != manifest {[s.name for s in specs]}")
            continue
        for g, s in zip(got, specs):
            if g["dtype"] not in COMPATIBLE.get(s.dtype, (g["dtype"],)):
                problems.append(f"{kind[:-1]} {s.name}: Core ML dtype {g['dtype']} cannot carry {s.dtype}")
            if kind == "inputs" and g["shape"] is not None:
                if len(g["shape"]) != s.rank:
                    problems.append(f"input {s.name}: rank {len(g['shape'])} != manifest {s.rank}")
                    continue
                for ax, (cd, md) in enumerate(zip(g["shape"], s.shape)):
                    if isinstance(md, int) and cd != md:
                        problems.append(f"input {s.name} axis {ax}: Core ML {cd} != manifest {md}")
                    if isinstance(md, str) and not isinstance(cd, list):
                        problems.append(f"input {s.name} axis {ax}: manifest dim {md!r} is dynamic, Core ML fixes {cd}")
    fp16 = info["tensor_dtypes"].get("FLOAT16", 0)
    fp32 = info["tensor_dtypes"].get("FLOAT32", 0)
    warnings = []
    if precision == "fp32" and fp16 > fp32:
        problems.append(f"precision fp32 requested but most float tensors are fp16 ({fp16} of {fp16 + fp32})")
    elif precision == "fp32" and fp16:
        warnings.append(f"{fp16} of {fp16 + fp32} float tensors are fp16 (explicit casts in the model)")
    if precision in ("fp16", "int8") and fp16 <= fp32:
        problems.append(f"precision {precision} requested but only {fp16} of {fp16 + fp32} float tensors are fp16")
    if precision == "int8" and info["quantized_weights"] == 0:
        warnings.append("precision int8 requested but no weight was large enough to quantize (weight_threshold)")
    if info["op_count"] == 0:
        problems.append("the program has no compute op")
    return {"passed": not problems, "problems": problems, "warnings": warnings, "fp16_tensors": fp16,
            "fp32_tensors": fp32, "quantized_weights": info["quantized_weights"]}


class CoreMLBackend(BackendBase):
    name = "coreml"
    extra = "coreml"
    concurrency = "serialized"

    @classmethod
    def unavailable_reason(cls) -> tuple[str, str]:
        if sys.platform != "darwin":
            return (f"Core ML predictions need macOS; this machine is {sys.platform}",
                    "run the coreml artifact on a Mac/iPhone, or use the onnx/openvino artifacts here")
        return super().unavailable_reason()

    @staticmethod
    def available() -> bool:
        if sys.platform != "darwin":
            return False
        try:
            import_coremltools()
        except BackendUnavailableError:
            return False
        return True

    def __init__(self, path: Path, artifact: Artifact, graph: Graph, compute_units: str = "ALL", **options: Any):
        super().__init__(path, artifact, graph, **options)
        if sys.platform != "darwin":
            raise BackendUnavailableError("Core ML predictions need macOS; this machine is "
                                          f"{sys.platform}", "run the coreml artifact on a Mac/iPhone, "
                                          "or use the onnx/openvino artifacts here")
        ct = import_coremltools()
        self.model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, compute_units.upper()))
        info = inspect_spec(Path(path))
        self.in_dtypes = {i["name"]: _NP_OF.get(i["dtype"], np.float32) for i in info["inputs"]}
        self.out_names = [s.name for s in graph.outputs]
        self._lock = threading.Lock()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = {n: np.asarray(a, dtype=self.in_dtypes.get(n, a.dtype)) for n, a in feeds.items()}
        with self._lock:
            res = self.model.predict(arrays)
        return {n: np.array(res[n]) for n in self.out_names}
