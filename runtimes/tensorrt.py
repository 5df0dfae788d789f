"""TensorRT backend: builds the engine on the target (cached on disk), runs it with the name-based API.

NOT EXECUTED on edgekit's CI or development machines (no NVIDIA GPU, TensorRT not installable):
the library calls below are kept thin and follow NVIDIA's TensorRT 10/11 Python docs
(``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``); everything around them
(profiles, version dispatch, cache keys, op check) is pure Python in ``trt_cache.py`` and tested.

Needs ``tensorrt`` (>=10) and ``cuda-python`` for device memory: ``pip install "edgekit[tensorrt]"``.
Thread safety: one execution context, one stream and shared device buffers per backend, so calls
are serialized with a lock (open one session per thread, each with its own context, to overlap).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from edgekit.runtimes.base import BackendBase
from edgekit.runtimes.trt_cache import (
    EngineCache,
    build_plan,
    check_in_profile,
    engine_cache_key,
    gpu_info,
)

from edgekit.core.bundle import Artifact, Graph, check_rel
from edgekit.core.errors import BackendUnavailableError, BundleError, ExportError
from edgekit.core.fsafe import read_capped
from edgekit.core.inputs import VALIDATION_MAX_BYTES, read_arrays

INSTALL = 'pip install "edgekit[tensorrt]"'
PLAN_FILE = "trt.json"


def _trt():
    try:
        import tensorrt
    except ImportError as e:
        raise BackendUnavailableError(f"TensorRT is not installed ({e.name or e})", INSTALL) from None
    return tensorrt


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise BackendUnavailableError("cuda-python is not installed (TensorRT needs it for device memory)",
                                          INSTALL) from None
    return cudart


def _ck(ret: Any) -> Any:
    """cuda-python returns (err, value...) tuples; raise on error."""
    err, *rest = ret if isinstance(ret, tuple) else (ret,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


def read_plan(art_dir: Path) -> dict:
    """The artifact's trt.json (untrusted: size-capped, its file names checked to stay inside the artifact)."""
    p = Path(art_dir) / PLAN_FILE
    if not os.path.lexists(p):
        raise BundleError(f"{art_dir} is not an edgekit TensorRT artifact (no {PLAN_FILE})",
                          "re-export with --target tensorrt")
    try:
        meta = json.loads(read_capped(p, PLAN_FILE, 1 << 20).decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise BundleError(f"{PLAN_FILE} of {Path(art_dir).name} is not valid JSON ({str(e)[:120]})",
                          "re-export with --target tensorrt") from None
    files = meta.get("files") if isinstance(meta, dict) else None
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()) \
            or not isinstance(meta.get("profiles"), dict) or not isinstance(meta.get("sha256"), dict):
        raise BundleError(f"{PLAN_FILE} of {Path(art_dir).name} lacks files/profiles/sha256 maps",
                          "re-export with --target tensorrt")
    for role, name in files.items():
        check_rel(name, f"{PLAN_FILE} files.{role}")
    return meta


def _make_calibrator(trt, npz: Path, input_names: list[str], cache_file: Path):
    """TensorRT 10 implicit-quantization calibrator fed from the bundle's calibration .npz."""
    cudart = _cudart()
    data = read_arrays(npz, npz.name, cap=VALIDATION_MAX_BYTES * 16, bundle_file=True,
                       hint="re-export with --target tensorrt --precision int8 --calib DATA")
    if not isinstance(data, dict) or any(n not in data for n in input_names):
        raise BundleError(f"{npz.name} holds no calibration arrays for inputs {input_names}",
                          "re-export with --target tensorrt --precision int8 --calib DATA")
    batches = [{n: np.ascontiguousarray(data[n][i]) for n in input_names} for i in range(len(data[input_names[0]]))]

    class _Calibrator(trt.IInt8EntropyCalibrator2):  # deprecated in TRT 10, removed in 11
        def __init__(self):
            super().__init__()
            self.i = 0
            self.dev = {n: _ck(cudart.cudaMalloc(max(b[n].nbytes for b in batches))) for n in input_names}

        def get_batch_size(self):
            return 1

        def get_batch(self, names):
            if self.i >= len(batches):
                return None
            b = batches[self.i]
            self.i += 1
            for n in input_names:
                _ck(cudart.cudaMemcpy(self.dev[n], b[n].ctypes.data, b[n].nbytes,
                                      cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))
            return [int(self.dev[n]) for n in names]

        def read_calibration_cache(self):
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache):
            cache_file.write_bytes(bytes(cache))

    return _Calibrator()


def build_engine(art_dir: Path, precision: str, profiles: Mapping | None = None,
                 workspace_mb: int = 2048) -> tuple[bytes, dict]:
    """Parse the artifact's ONNX for this TensorRT version and build a serialized engine."""
    trt = _trt()
    art_dir = Path(art_dir)
    meta = read_plan(art_dir)
    plan = build_plan(trt.__version__, precision, meta["files"])
    profiles = profiles or meta["profiles"]
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the default since 10; 11 is always strongly typed
    parser = trt.OnnxParser(network, logger)
    onnx_path = art_dir / plan["onnx"]
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT {trt.__version__} cannot parse {onnx_path.name}: {errs}",
                          "see the op check in the artifact's trt.json; replace the unsupported ops")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    for flag in plan["flags"]:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    for name, p in profiles.items():
        profile.set_shape(name, p["min"], p["opt"], p["max"])
    config.add_optimization_profile(profile)
    calib_dir = tempfile.mkdtemp(prefix="edgekit-trt-calib-")  # never inside the bundle: its checksum covers it
    try:
        if plan["calibrator"]:
            names = [network.get_input(i).name for i in range(network.num_inputs)]
            config.int8_calibrator = _make_calibrator(trt, art_dir / plan["calibrator"], names,
                                                      Path(calib_dir) / "calib.cache")
        engine = builder.build_serialized_network(network, config)
    finally:
        shutil.rmtree(calib_dir, ignore_errors=True)
    if engine is None:
        raise ExportError(f"TensorRT {trt.__version__} failed to build an engine from {onnx_path.name}",
                          "run with a TensorRT logger at VERBOSE to see which layer failed")
    return bytes(engine), {"plan": plan, "profiles": profiles}


def engine_for(art_dir: Path, precision: str, *, cache_root: str | None = None, profiles: Mapping | None = None,
               rebuild: bool = False) -> tuple[Path, dict]:
    """Cached engine path for this GPU/TensorRT/shapes; builds and stores it on a miss."""
    trt = _trt()
    gpu = gpu_info()
    if gpu is None:
        raise BackendUnavailableError("no NVIDIA GPU visible (nvidia-smi found none)",
                                      "TensorRT engines must be built and run on the target GPU")
    meta = read_plan(art_dir)
    profiles = profiles or meta["profiles"]
    plan = build_plan(trt.__version__, precision, meta["files"])
    key = engine_cache_key(onnx_sha256=meta["sha256"][plan["onnx"]], precision=precision,
                           trt_version=trt.__version__, gpu_name=gpu["name"],
                           compute_capability=gpu["compute_capability"], profiles=profiles,
                           options={"flags": plan["flags"], "strongly_typed": plan["strongly_typed"]})
    cache = EngineCache(cache_root)
    hit = None if rebuild else cache.get(key)
    if hit:
        return hit, {"key": key, "cached": True, **(cache.meta(key) or {})}
    engine, info = build_engine(art_dir, precision, profiles)
    info = {**info, "gpu": gpu, "trt": trt.__version__}
    return cache.put(key, engine, info), {"key": key, "cached": False, **info}


class TensorRTBackend(BackendBase):
    name = "tensorrt"
    extra = "tensorrt"
    concurrency = "serialized"

    @staticmethod
    def available() -> bool:
        try:
            _trt()
            _cudart()
        except BackendUnavailableError:
            return False
        return gpu_info() is not None

    def __init__(self, path: Path, artifact: Artifact, graph: Graph, cache_dir: str | None = None,
                 profiles: Mapping | None = None, **options: Any):
        super().__init__(path, artifact, graph, **options)
        trt, cudart = _trt(), _cudart()
        self.cudart = cudart
        engine_path, self.build_info = engine_for(Path(path), artifact.precision, cache_root=cache_dir,
                                                  profiles=profiles)
        self.profiles = self.build_info.get("profiles") or read_plan(Path(path))["profiles"]
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.stream = _ck(cudart.cudaStreamCreate())
        self._dev: dict[str, tuple[int, int]] = {}  # name -> (ptr, bytes)
        self._lock = threading.Lock()  # the context, stream and buffers serve one call at a time

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._dev.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _ck(self.cudart.cudaFree(ptr))
            ptr = _ck(self.cudart.cudaMalloc(max(nbytes, 1)))
            self._dev[name] = (ptr, nbytes)
        return int(ptr)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            return self._run_locked(feeds)

    def _run_locked(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart, ctx, h2d = self.cudart, self.context, self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        check_in_profile(self.profiles, {n: a.shape for n, a in feeds.items()})
        for name in self.inputs:
            a = np.ascontiguousarray(feeds[name], dtype=self.dtypes[name])
            ctx.set_input_shape(name, a.shape)
            ptr = self._buffer(name, a.nbytes)
            _ck(cudart.cudaMemcpyAsync(ptr, a.ctypes.data, a.nbytes, h2d, self.stream))
            ctx.set_tensor_address(name, ptr)
        host = {}
        for name in self.outputs:
            out = np.empty(tuple(ctx.get_tensor_shape(name)), dtype=self.dtypes[name])
            ctx.set_tensor_address(name, self._buffer(name, out.nbytes))
            host[name] = out
        if not ctx.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, out in host.items():
            _ck(cudart.cudaMemcpyAsync(out.ctypes.data, self._dev[name][0], out.nbytes, d2h, self.stream))
        _ck(cudart.cudaStreamSynchronize(self.stream))
        return host

    def __del__(self):  # pragma: no cover - needs a GPU
        for ptr, _ in getattr(self, "_dev", {}).values():
            try:
                self.cudart.cudaFree(ptr)
            except Exception:  # noqa: BLE001
                pass
