"""OpenVINO backend: runs OpenVINO IR (and ONNX) artifacts on CPU / GPU / NPU / AUTO.

Options (``edgekit.load(path, backend="openvino", **options)``):
  device       "CPU" (default, or $EDGEKIT_OV_DEVICE), "GPU", "NPU", "AUTO", "AUTO:GPU,CPU", ...
  hint         "LATENCY" (default) | "THROUGHPUT" | "CUMULATIVE_THROUGHPUT"
  static_shapes  True -> reshape symbolic dims to the export example's sizes; or {input: shape}.
               NPU needs static shapes, so it defaults to True there.
  inference_precision  "f32" | "f16" | "bf16"; fp32 and fp16 (fp16 = compressed weights) artifacts
               default to "f32" on CPU so a CPU with bf16 units does not silently compute in bf16
               (OpenVINO's CPU default there); so do int8/int8w artifacts (their float layers: bf16
               cost EfficientNet-Lite0 int8 ~4 points of top-1 agreement for no measurable speed).
  threads      inference threads (default $EDGEKIT_THREADS or OpenVINO's choice)
  cache_dir    OpenVINO compiled-model cache directory

Thread safety: an InferRequest serves one call at a time, so ``run`` takes a request from a pool
(created on demand, one per concurrent caller), copies the outputs out of it and puts it back;
a request whose call failed is dropped. ``raw_call`` (benchmarks) uses one request: single thread.
"""
from __future__ import annotations

import os
import queue
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from edgekit.runtimes.base import BackendBase

from edgekit.core.bundle import Artifact, Graph
from edgekit.core.errors import BackendUnavailableError, BundleError, UsageError

INSTALL = 'pip install "edgekit[openvino]"'
HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")


def import_openvino():
    try:
        import openvino
    except ImportError as e:
        raise BackendUnavailableError(f"OpenVINO is not installed ({e.name or e})", INSTALL) from None
    return openvino


def model_file(path: Path) -> Path:
    """The .xml (or .onnx) inside a directory artifact, or the file itself."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.xml")) or sorted(path.glob("*.onnx"))
        if not found:
            raise BundleError(f"OpenVINO artifact {path.name} holds no .xml/.onnx model", "re-export the bundle")
        return found[0]
    return path


def static_shape_map(graph: Graph, example_shapes: Mapping[str, Any] | None,
                     given: Any) -> dict[str, list[int]] | None:
    """Concrete shapes for ``reshape`` (pure; tested). ``given`` True/dict/None."""
    if not given:
        return None
    if isinstance(given, Mapping):
        unknown = sorted(set(given) - {s.name for s in graph.inputs})
        if unknown:
            raise UsageError(f"static_shapes names unknown input(s) {unknown}",
                             f"inputs: {[s.name for s in graph.inputs]}")
        return {k: [int(v) for v in shape] for k, shape in given.items()}
    ex = dict(example_shapes or {})
    out = {}
    for s in graph.inputs:
        if s.name in ex:
            out[s.name] = [int(v) for v in ex[s.name]]
        else:
            out[s.name] = [d if isinstance(d, int) else 1 for d in s.shape]
    return out


class OpenVINOBackend(BackendBase):
    name = "openvino"
    extra = "openvino"

    @staticmethod
    def available() -> bool:
        try:
            import_openvino()
            return True
        except BackendUnavailableError:
            return False

    def __init__(self, path: Path, artifact: Artifact, graph: Graph, device: str | None = None,
                 hint: str = "LATENCY", static_shapes: Any = None, inference_precision: str | None = None,
                 threads: int | None = None, cache_dir: str | None = None, **options: Any):
        super().__init__(path, artifact, graph, **options)
        ov = import_openvino()
        core = ov.Core()
        device = (device or os.environ.get("EDGEKIT_OV_DEVICE") or "CPU").upper()
        base = device.split(":")[0].split(".")[0]
        if base not in ("AUTO", "MULTI", "HETERO") and base not in {d.split(".")[0] for d in core.available_devices}:
            raise BackendUnavailableError(f"OpenVINO device {device!r} is not present here "
                                          f"(available: {', '.join(core.available_devices)})",
                                          "choose device='CPU' or 'AUTO', or install the device's driver")
        hint = hint.upper()
        if hint not in HINTS:
            raise UsageError(f"unknown OpenVINO performance hint {hint!r}", f"use one of {', '.join(HINTS)}")
        model = core.read_model(str(model_file(path)))
        if static_shapes is None and base == "NPU":
            static_shapes = True
        examples = artifact.extra.get("example_shapes") or graph.metadata.get("example_shapes")
        shapes = static_shape_map(graph, examples, static_shapes)
        if shapes:
            model.reshape({self._port_name(model, i, s.name): shapes[s.name]
                           for i, s in enumerate(graph.inputs) if s.name in shapes})
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint}
        if inference_precision is None and base in ("CPU", "AUTO"):
            inference_precision = "f32"
        if inference_precision:
            config["INFERENCE_PRECISION_HINT"] = inference_precision
        threads = threads or int(os.environ.get("EDGEKIT_THREADS", "0") or 0)
        if threads and base == "CPU":
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if cache_dir:
            core.set_property({"CACHE_DIR": str(cache_dir)})
        self.device, self.hint, self.static_shapes = device, hint, shapes
        self.note = None
        try:
            self.compiled = core.compile_model(model, device, config)
        except RuntimeError as e:
            if "INFERENCE_PRECISION_HINT" in config or base not in ("CPU", "AUTO"):
                raise BundleError(f"OpenVINO cannot compile {self.path.name} for {device}: "
                                  f"{str(e).strip().splitlines()[-1][:200]}", "try device='CPU'") from None
            # Some int8 graphs have no bf16 kernel on CPUs whose default hint is bf16: compute in f32.
            config["INFERENCE_PRECISION_HINT"] = "f32"
            self.compiled = core.compile_model(model, device, config)
            self.note = "compiled with INFERENCE_PRECISION_HINT=f32 (device default failed)"
        self.inference_precision = str(self.compiled.get_property("INFERENCE_PRECISION_HINT")) \
            if base == "CPU" else config.get("INFERENCE_PRECISION_HINT", "device default")
        self.request = self.compiled.create_infer_request()  # raw_call's (single-thread benchmarks)
        self._idle: queue.SimpleQueue = queue.SimpleQueue()  # infer requests free for run()
        self._idle.put(self.compiled.create_infer_request())
        self.version = f"{ov.get_version().split('-')[0]} {device}"
        self.in_index = {s.name: self._find(self.compiled.inputs, i, s.name) for i, s in enumerate(graph.inputs)}
        self.out_names = [s.name for s in graph.outputs]
        if len(self.compiled.outputs) != len(self.out_names):
            raise BundleError(f"OpenVINO model has {len(self.compiled.outputs)} outputs, the manifest "
                              f"{len(self.out_names)}", "re-export the bundle")
        self.out_index = [self._find(self.compiled.outputs, i, n) for i, n in enumerate(self.out_names)]

    @staticmethod
    def _port_name(model: Any, i: int, name: str) -> Any:
        for port in model.inputs:
            if name in port.get_names():
                return name
        return model.inputs[i]

    @staticmethod
    def _find(ports: Any, i: int, name: str) -> int:
        for j, port in enumerate(ports):
            if name in port.get_names():
                return j
        return i  # converted graphs keep the export order

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            req = self._idle.get_nowait()
        except queue.Empty:  # every request is busy in another thread: one more
            req = self.compiled.create_infer_request()
        req.infer({self.in_index[n]: a for n, a in feeds.items()}, share_inputs=True)
        out = {n: req.get_output_tensor(j).data.copy() for n, j in zip(self.out_names, self.out_index)}
        self._idle.put(req)  # only after a successful call: a failed request is not reused
        return out

    def raw_call(self):
        req, idx = self.request, self.in_index
        return lambda feeds: req.infer({idx[n]: a for n, a in feeds.items()}, share_inputs=True)
