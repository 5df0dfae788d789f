"""ONNX Runtime backend. The library is imported when a session is opened, not before."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from edgekit.runtimes.base import BackendBase

from edgekit.core.bundle import Artifact, Graph
from edgekit.core.errors import BackendUnavailableError, BundleError


def _ort():
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover - core dependency
        raise BackendUnavailableError(f"onnxruntime cannot be imported ({e})",
                                      'pip install "edgekit" (onnxruntime is a core dependency)') from None
    return onnxruntime


class OrtBackend(BackendBase):
    name = "onnxruntime"
    extra = ""

    @classmethod
    def unavailable_reason(cls) -> tuple[str, str]:
        return "onnxruntime cannot be imported", "pip install onnxruntime (a core dependency of edgekit)"

    @staticmethod
    def available() -> bool:
        try:
            _ort()
            return True
        except BackendUnavailableError:
            return False

    def __init__(self, path: Path, artifact: Artifact, graph: Graph, providers: list[str] | None = None,
                 threads: int | None = None, **options: Any):
        super().__init__(path, artifact, graph, **options)
        ort = _ort()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = threads or int(os.environ.get("EDGEKIT_THREADS", "0") or 0)
        if threads:
            so.intra_op_num_threads = threads
        so.log_severity_level = 3
        avail = ort.get_available_providers()
        providers = [p for p in (providers or avail) if p in avail] or ["CPUExecutionProvider"]
        # TensorRT/CUDA EPs first when present, CPU always last as fallback.
        order = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CoreMLExecutionProvider"]
        providers = sorted(providers, key=lambda p: order.index(p) if p in order else len(order))
        try:
            self.sess = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            raise BundleError(f"onnxruntime cannot load {path.name}: {str(e).splitlines()[0]}",
                              "re-export the bundle; the ONNX file is unreadable") from None
        self.output_names = [o.name for o in self.sess.get_outputs()]
        self.providers = self.sess.get_providers()
        self._sess_run = self.sess.run

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self._sess_run(self.output_names, feeds)))

    def raw_call(self):
        sess_run, names = self._sess_run, self.output_names
        return lambda feeds: sess_run(names, feeds)
