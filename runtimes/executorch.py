"""ExecuTorch backend: runs ``.pte`` artifacts (XNNPACK delegate) through ExecuTorch's Python runtime.

On a host this needs the ``executorch`` package, which imports torch (``pip install
"edgekit[executorch]"``). On a phone the same ``.pte`` is loaded by the app with ExecuTorch's own
Java/Kotlin or Swift API, not by this module (docs/mobile.md). The library is imported when a
session is opened, never at import time, so ``edgekit.runtimes`` stays torch-free.

Thread safety: an ExecuTorch ``Method`` holds its own memory-planned buffers (all methods of one
``Program`` share one arena), so two calls must not overlap. A per-session lock serializes them;
threads sharing a Session each get their own correct result. A pool of loaded programs would not
run in parallel: ``Method.execute`` holds the GIL for the whole call (executorch 1.5.1), so it
would only multiply the arena memory.

Dynamic dims are bounded: the artifact's ``extra.dynamic_bounds`` ({symbol: [1, N]}) says what the
program planned memory for, and a larger size is refused with an InputShapeError naming N.
Options: ``threads`` (or $EDGEKIT_THREADS): size of ExecuTorch's process-wide thread pool (it applies to
every ExecuTorch session in the process; set it before sessions run, not while one executes).
"""
from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from edgekit.runtimes.base import BackendBase

from edgekit.core.bundle import Artifact, Graph
from edgekit.core.errors import BackendUnavailableError, BundleError, InputShapeError
from edgekit.core.specs import TensorSpec

INSTALL = 'pip install "edgekit[executorch]"'
METHOD = "forward"
NEEDS_TORCH = ("ExecuTorch's Python runtime imports torch, so it runs on a host with torch; a phone app "
               "loads the .pte with ExecuTorch's own runtime, see docs/mobile.md")


def import_executorch_runtime():
    """``executorch.runtime`` (which imports torch), or a one-line BackendUnavailableError."""
    missing = [m for m in ("executorch", "torch") if importlib.util.find_spec(m) is None]
    if missing:
        raise BackendUnavailableError(f"backend 'executorch' needs {' and '.join(missing)}, which "
                                      f"{'is' if len(missing) == 1 else 'are'} not installed: {NEEDS_TORCH}",
                                      INSTALL)
    try:
        import executorch.runtime as runtime
    except ImportError as e:
        raise BackendUnavailableError(f"backend 'executorch' cannot import {e.name or e}: {NEEDS_TORCH}",
                                      INSTALL) from None
    return runtime


def planned_bounds(path: Path, inputs: list[TensorSpec], method: str = METHOD) -> dict[str, list[int]]:
    """{symbol: [1, N]} for each symbolic input dim: N = the size the program planned memory for."""
    runtime = import_executorch_runtime()
    meta = runtime.Runtime.get().load_program(str(path)).metadata(method)
    bounds: dict[str, list[int]] = {}
    for i, spec in enumerate(inputs):
        sizes = list(meta.input_tensor_meta(i).sizes())
        for ax, d in enumerate(spec.shape):
            if isinstance(d, str) and ax < len(sizes):
                hi = int(sizes[ax])
                bounds[d] = [1, min(hi, bounds[d][1]) if d in bounds else hi]
    return bounds


class ExecuTorchBackend(BackendBase):
    name = "executorch"
    extra = "executorch"

    @classmethod
    def unavailable_reason(cls) -> tuple[str, str]:
        try:
            import_executorch_runtime()
        except BackendUnavailableError as e:
            return e.message, e.hint or INSTALL
        return "backend 'executorch' cannot run on this machine", INSTALL

    @staticmethod
    def available() -> bool:
        """Installed *and* importable: a torch that is present but fails to import (a broken install, a
        blocked import) makes the backend unavailable here, not the artifact broken."""
        if not all(importlib.util.find_spec(m) is not None for m in ("executorch", "torch")):
            return False
        try:
            import_executorch_runtime()  # imports torch: what opening a session would do anyway
        except BackendUnavailableError:
            return False
        return True

    def __init__(self, path: Path, artifact: Artifact, graph: Graph, threads: int | None = None,
                 **options: Any):
        super().__init__(path, artifact, graph, **options)
        self._rt = import_executorch_runtime()
        import torch

        self._from_numpy = torch.from_numpy
        threads = threads or int(os.environ.get("EDGEKIT_THREADS", "0") or 0)
        if threads:
            _set_threads(int(threads))
        self.method_name = str(artifact.extra.get("method", METHOD))
        self.in_names = [s.name for s in graph.inputs]
        self.out_names = [s.name for s in graph.outputs]
        self.bounds = [(s.name, ax, d, int(artifact.extra.get("dynamic_bounds", {}).get(d, [1, 0])[1]))
                       for s in graph.inputs for ax, d in enumerate(s.shape) if isinstance(d, str)
                       and d in artifact.extra.get("dynamic_bounds", {})]
        self._lock = threading.Lock()
        self._method = self._load()
        self.version = f"{_version()} XNNPACK"

    def _load(self) -> Any:
        try:
            program = self._rt.Runtime.get().load_program(str(self.path))
            if self.method_name not in program.method_names:
                raise BundleError(f"{self.path.name} has no method {self.method_name!r} "
                                  f"(it has {sorted(program.method_names)})", "re-export the bundle")
            self._program = program  # keeps the program (and its arena) alive with the method
            method = program.load_method(self.method_name)
        except BundleError:
            raise
        except Exception as e:  # ExecuTorch raises RuntimeError/ValueError with native error codes
            raise BundleError(f"ExecuTorch cannot load {self.path.name}: {(str(e).strip().splitlines() or [''])[0]}",
                              "re-export the bundle with this executorch version") from None
        if method.metadata.num_outputs() != len(self.out_names):
            raise BundleError(f"{self.path.name} has {method.metadata.num_outputs()} outputs, the manifest "
                              f"{len(self.out_names)}", "re-export the bundle")
        return method

    def _check_bounds(self, feeds: Mapping[str, np.ndarray]) -> None:
        for name, ax, symbol, hi in self.bounds:
            size = feeds[name].shape[ax]
            if size > hi:
                raise InputShapeError(f"input {name!r} has {symbol} {size} on axis {ax}, above the maximum {hi} "
                                      "this ExecuTorch program was exported for",
                                      f"split the input into chunks of at most {hi}, or re-export with "
                                      f"--option executorch.max_dim={size}")

    def _tensors(self, feeds: Mapping[str, np.ndarray]) -> list:
        """Zero-copy torch views; ExecuTorch ignores strides, so non-contiguous arrays are copied first
        (and read-only ones, which torch.from_numpy warns about)."""
        out = []
        for n in self.in_names:
            a = feeds[n]
            if not (a.flags.c_contiguous and a.flags.writeable):
                a = np.array(a, order="C")
            out.append(self._from_numpy(a))
        return out

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._check_bounds(feeds)
        tensors = self._tensors(feeds)
        with self._lock:
            outs = self._method.execute(tensors)
        return {n: o.numpy() for n, o in zip(self.out_names, outs)}  # execute returns fresh (cloned) tensors

    def raw_call(self):
        execute, tensors, check, lock = self._method.execute, self._tensors, self._check_bounds, self._lock

        def call(feeds: Mapping[str, np.ndarray]) -> list:
            check(feeds)  # a size above the bound would fail natively; a few comparisons
            with lock:
                return execute(tensors(feeds))
        return call


_THREADS_LOCK = threading.Lock()


def _set_threads(n: int) -> None:
    """ExecuTorch's thread pool is process-wide and must not be reset while a program executes: it is
    reset only when the size changes (before this session loads its program), under a module lock."""
    from executorch.extension.pybindings import portable_lib

    with _THREADS_LOCK:
        if portable_lib._threadpool_get_thread_count() != n:
            portable_lib._unsafe_reset_threadpool(n)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("executorch")
    except PackageNotFoundError:  # pragma: no cover - installed from source
        return "(version unknown)"
