"""TensorRT engine plans without TensorRT: optimisation profiles, version dispatch, cache keys.

A TensorRT engine is specific to the GPU model (compute capability), the TensorRT version and the
shape ranges it was built for, so edgekit builds engines on the target and caches them on disk
under a key made of exactly those things. Everything here is pure Python (torch- and TRT-free)
so it is tested on machines without a GPU.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from edgekit.core.errors import InputShapeError, UsageError
from edgekit.core.specs import TensorSpec

CACHE_ENV = "EDGEKIT_TRT_CACHE"
DEFAULT_BATCH_MAX = 32
_SEQ_FACTOR = 4


# ----------------------------------------------------------------------------- profiles
def _is_batch(symbol: str) -> bool:
    return "batch" in symbol.lower() or symbol.lower() in ("n", "b", "bs")


def derive_profiles(inputs: Sequence[TensorSpec], example_shapes: Mapping[str, Sequence[int]],
                    overrides: Mapping[str, Sequence[int]] | None = None) -> dict[str, dict[str, list[int]]]:
    """min/opt/max shapes per input from the symbolic dims of the input specs.

    One range per *symbol*, shared by every input using it (``input_ids`` and ``attention_mask``
    share ``batch`` and ``seq``). Defaults: min 1, opt = the example's size, max = max(example, 32)
    for batch-like symbols and 4x the example for other symbols. ``overrides`` maps a symbol to
    ``(min, opt, max)``. Static inputs get min = opt = max.
    """
    overrides = dict(overrides or {})
    ranges: dict[str, tuple[int, int, int]] = {}
    for spec in inputs:
        ex = list(example_shapes.get(spec.name) or [])
        if len(ex) != spec.rank:
            raise UsageError(f"example shape {ex} of input {spec.name!r} does not match {spec.describe()}",
                             "pass one example input per model input")
        for axis, dim in enumerate(spec.shape):
            if not isinstance(dim, str) or dim in ranges:
                continue
            e = int(ex[axis])
            if dim in overrides:
                r = tuple(int(v) for v in overrides[dim])
                if len(r) != 3:
                    raise UsageError(f"profile for {dim!r} must be (min, opt, max), got {list(r)}",
                                     f"e.g. --profile {dim}=1,{e},{max(e, 8)}")
            elif _is_batch(dim):
                r = (1, e, max(e, DEFAULT_BATCH_MAX))
            else:
                r = (1, e, max(e, _SEQ_FACTOR * e))
            lo, opt, hi = r
            if not (1 <= lo <= opt <= hi):
                raise UsageError(f"profile for {dim!r} must satisfy 1 <= min <= opt <= max, got {list(r)}",
                                 f"e.g. --profile {dim}=1,{e},{max(e, 8)}")
            ranges[dim] = r
    unknown = sorted(set(overrides) - set(ranges))
    if unknown:
        raise UsageError(f"profile given for unknown dimension(s) {unknown}",
                         f"dynamic dimensions of this model: {sorted(ranges) or 'none'}")
    out: dict[str, dict[str, list[int]]] = {}
    for spec in inputs:
        ex = [int(v) for v in example_shapes[spec.name]]
        prof = {}
        for k, idx in (("min", 0), ("opt", 1), ("max", 2)):
            prof[k] = [ranges[d][idx] if isinstance(d, str) else int(d) for d in spec.shape]
        if not spec.is_dynamic:
            prof = {"min": ex, "opt": ex, "max": ex}
        out[spec.name] = prof
    return out


def parse_profile_overrides(items: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """``["batch=1,8,64", "seq=1,128,512"]`` -> ``{"batch": (1, 8, 64), ...}`` (CLI --profile)."""
    out = {}
    for item in items or ():
        m = re.fullmatch(r"\s*([A-Za-z_][\w.]*)\s*=\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*", item)
        if not m:
            raise UsageError(f"cannot read profile {item!r}", "write it as SYMBOL=MIN,OPT,MAX, e.g. batch=1,8,32")
        out[m.group(1)] = (int(m.group(2)), int(m.group(3)), int(m.group(4)))
    return out


def check_in_profile(profiles: Mapping[str, Mapping[str, Sequence[int]]], shapes: Mapping[str, Sequence[int]]) -> None:
    """Raise InputShapeError when a feed falls outside the engine's min/max profile."""
    for name, shape in shapes.items():
        p = profiles.get(name)
        if p is None:
            continue
        for axis, (lo, hi, got) in enumerate(zip(p["min"], p["max"], shape)):
            if not lo <= int(got) <= hi:
                raise InputShapeError(
                    f"input {name!r} has size {got} on axis {axis}; the TensorRT engine was built for "
                    f"{lo}..{hi} (profile min {list(p['min'])}, max {list(p['max'])})",
                    "rebuild the engine with a wider range: edgekit build-engine BUNDLE --profile SYMBOL=MIN,OPT,MAX")


# ----------------------------------------------------------------------------- versions
def parse_trt_version(version: str) -> tuple[int, int, int]:
    m = re.match(r"\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?", str(version))
    if not m:
        raise UsageError(f"cannot read TensorRT version {version!r}", "expected e.g. 10.15.1 or 11.2")
    return int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0)


def build_plan(trt_version: str, precision: str, files: Mapping[str, str]) -> dict[str, Any]:
    """How to build an engine for ``precision`` with TensorRT ``trt_version`` (version dispatch).

    ``files`` maps roles to ONNX files present in the artifact: ``fp32`` (always), ``fp16``
    (graph converted to fp16, I/O kept fp32) and ``qdq`` (int8 Q/DQ graph), plus ``calib`` (.npz).

    * TensorRT 10: weakly typed network; fp16 -> BuilderFlag.FP16 on the fp32 graph; int8 ->
      BuilderFlag.INT8 (+FP16) with an IInt8EntropyCalibrator2 fed from the calibration set (implicit
      quantization, deprecated in 10.x but present); if no calibration set was shipped but a Q/DQ
      graph was, the Q/DQ graph is built instead (explicit quantization).
    * TensorRT 11+: the precision flags and calibrators are removed and networks are always strongly
      typed, so the precision comes from the ONNX graph: fp16 -> the fp16 graph, int8 -> the Q/DQ graph.
    """
    major = parse_trt_version(trt_version)[0]
    if precision not in ("fp32", "fp16", "int8"):
        raise UsageError(f"unknown precision {precision!r} for TensorRT", "use fp32, fp16 or int8")
    if major < 10:
        raise UsageError(f"TensorRT {trt_version} is too old; edgekit uses the TensorRT 10+ name-based API",
                         'pip install "edgekit[tensorrt]" (tensorrt>=10)')

    def need(role: str) -> str:
        if role not in files:
            raise UsageError(f"the TensorRT artifact has no {role} graph needed for {precision} on TensorRT {major}",
                             f"re-export with --target tensorrt --precision {precision}"
                             + (" --calib DATA" if role in ("qdq", "calib") else ""))
        return files[role]

    plan: dict[str, Any] = {"trt_major": major, "precision": precision, "flags": [], "calibrator": None,
                            "strongly_typed": major >= 11}
    if major == 10:
        if precision == "fp32":
            plan["onnx"] = need("fp32")
        elif precision == "fp16":
            plan.update(onnx=need("fp32"), flags=["FP16"])
        elif "calib" in files:
            plan.update(onnx=need("fp32"), flags=["INT8", "FP16"], calibrator=files["calib"])
        else:
            plan.update(onnx=need("qdq"), flags=["FP16"], note="explicit Q/DQ quantization")
    else:
        plan["onnx"] = need({"fp32": "fp32", "fp16": "fp16", "int8": "qdq"}[precision])
        if major > 11:
            plan["note"] = f"TensorRT {major} is newer than edgekit knows; using the TensorRT 11 (strongly typed) path"
    return plan


# ----------------------------------------------------------------------------- GPU + cache keys
def parse_nvidia_smi(text: str) -> list[dict[str, str]]:
    """Rows of ``nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader``."""
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and parts[0]:
            gpus.append({"name": parts[0], "compute_capability": parts[1],
                         "driver": parts[2] if len(parts) > 2 else ""})
    return gpus


def gpu_info(index: int = 0) -> dict[str, str] | None:
    """Name and compute capability of GPU ``index`` (via nvidia-smi), or None when there is none."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    gpus = parse_nvidia_smi(out)
    return gpus[index] if index < len(gpus) else None


def engine_cache_key(*, onnx_sha256: str, precision: str, trt_version: str, gpu_name: str,
                     compute_capability: str, profiles: Mapping[str, Any], options: Mapping[str, Any] | None = None,
                     ) -> str:
    """sha256 over everything an engine depends on: graph, precision, TRT version, GPU, shapes, options."""
    doc = {"onnx": onnx_sha256, "precision": precision, "trt": str(trt_version), "gpu": gpu_name.strip(),
           "sm": str(compute_capability).strip(), "profiles": profiles, "options": dict(options or {})}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def cache_dir(root: str | os.PathLike | None = None) -> Path:
    if root:
        return Path(root)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgekit" / "trt"


class EngineCache:
    """``<dir>/<key>.engine`` + ``<key>.json`` (what it was built from). Writes are atomic."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = cache_dir(root)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.engine"

    def get(self, key: str) -> Path | None:
        p = self.path(key)
        return p if p.is_file() and p.stat().st_size > 0 else None

    def meta(self, key: str) -> dict | None:
        p = self.root / f"{key}.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def put(self, key: str, engine: bytes, meta: Mapping[str, Any]) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        for suffix, data in ((".json", json.dumps(dict(meta), indent=2, sort_keys=True).encode()),
                             (".engine", bytes(engine))):
            fd, tmp = tempfile.mkstemp(prefix=f".{key[:12]}.", suffix=".tmp", dir=self.root)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self.root / f"{key}{suffix}")
        return self.path(key)

    def entries(self) -> list[dict]:
        out = []
        for p in sorted(self.root.glob("*.engine")) if self.root.is_dir() else []:
            out.append({"key": p.stem, "bytes": p.stat().st_size, **(self.meta(p.stem) or {})})
        return out
