"""The Session every backend sits behind: input checks against the specs, then the raw backend call.

Checks are precomputed once per session so the per-call overhead stays a few microseconds.
Float inputs must be finite (NaN/inf is an InputError) unless the session was opened with
``allow_nonfinite`` (True, or the names of the inputs that may carry them, e.g. -inf masks), or
the environment says so (``EDGEKIT_ALLOW_NONFINITE=1`` or a comma list of input names; the CLI's
opt-out).

Thread safety: one Session may be shared by any number of threads; ``run`` keeps no per-call state
on the Session, and every backend gives each caller its own result (ONNX Runtime runs calls in
parallel, OpenVINO keeps a pool of infer requests, Core ML and TensorRT serialize calls with a
lock). A backend failure on inputs that passed the checks is an InferenceError, and the Session
stays usable. Torch-free.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from edgekit.core.bundle import Artifact, Graph
from edgekit.core.errors import (
    EdgekitError,
    InferenceError,
    InputDtypeError,
    InputError,
    InputNameError,
    InputRankError,
    InputShapeError,
    NonFiniteInputError,
    UsageError,
    first_line,
)
from edgekit.core.specs import TensorSpec


class BackendBase:
    """One backend = one class in runtimes/<backend>.py. ``run`` is the raw call, no checks.

    ``run`` must be safe to call from several threads at once and return each caller its own
    arrays (``concurrency`` says how: "parallel" or "serialized" behind a lock)."""

    name = "base"
    extra = ""  # pip extra that installs the backend library
    concurrency = "parallel"

    def __init__(self, path: Path, artifact: Artifact, graph: Graph, **options: Any):
        self.path, self.artifact, self.graph, self.options = path, artifact, graph, options

    @staticmethod
    def available() -> bool:  # pragma: no cover - overridden
        return False

    @classmethod
    def unavailable_reason(cls) -> tuple[str, str]:
        """(problem, fix) when ``available()`` is False; backends with other causes override it."""
        return f"backend {cls.name!r} cannot run on this machine", f'pip install "edgekit[{cls.extra}]"'

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def raw_call(self):
        """``f(feeds)`` calling the backend library directly, with nothing of ours around it (for benches)."""
        return self.run


def _as_array(v: Any) -> np.ndarray:
    """A feed as an ndarray; torch tensors (even ones that require grad, or on a GPU) by duck typing,
    so this module never imports torch."""
    if isinstance(v, np.ndarray):
        return v
    if hasattr(v, "detach") and hasattr(v, "cpu"):
        return v.detach().cpu().numpy()
    return np.asarray(v)


def _finite(a: np.ndarray, zeros: dict[int, np.ndarray] | None = None) -> bool:
    """True when no value of a float array is NaN/inf. With ``zeros`` (a per-input cache, float32/64
    only) the fast path: the dot product with zeros is 0 exactly when every value is finite (0 * x is
    0 for any finite x, so no overflow); else the exact elementwise check."""
    if zeros is None:
        return bool(np.isfinite(a).all())
    z = zeros.get(a.size)
    if z is None:
        if len(zeros) > 8:
            zeros.clear()
        z = zeros[a.size] = np.zeros(a.size, a.dtype)  # calloc: untouched pages cost no memory
    try:
        return math.isfinite(np.vdot(a, z))
    except RuntimeWarning:  # warnings raised as errors: 0 * inf is "invalid"
        return False


def _nonfinite_names(allow: bool | Iterable[str], inputs: list[TensorSpec]) -> frozenset[str]:
    names = {s.name for s in inputs}
    env = os.environ.get("EDGEKIT_ALLOW_NONFINITE", "").strip()
    if allow is True or (not allow and env.lower() in ("1", "all", "true")):
        return frozenset(names)
    if not allow:  # the environment (the CLI's opt-out) names inputs of any model: keep this one's
        return frozenset(n.strip() for n in env.split(",")) & names
    given = {allow} if isinstance(allow, str) else set(allow)
    unknown = sorted(given - names)
    if unknown:
        raise UsageError(f"allow_nonfinite names unknown input(s) {unknown}",
                         f"use True or some of this model's inputs: {sorted(names)}")
    return frozenset(given)


class Session:
    """A runnable graph: ``run({name: array}) -> {name: array}`` with inputs checked first.

    Safe to share between threads (see the module docstring). ``allow_nonfinite``: True, or the
    names of the float inputs that may hold NaN/inf (refused by default)."""

    def __init__(self, backend: BackendBase, inputs: list[TensorSpec], outputs: list[TensorSpec],
                 artifact: Artifact | None = None, allow_nonfinite: bool | Iterable[str] = False):
        self.backend = backend
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.artifact = artifact
        self._names = frozenset(s.name for s in self.inputs)
        self.allow_nonfinite = _nonfinite_names(allow_nonfinite, self.inputs)
        self._checks = []
        for s in self.inputs:
            fixed = tuple((i, d) for i, d in enumerate(s.shape) if isinstance(d, int))
            sym = tuple((i, d) for i, d in enumerate(s.shape) if isinstance(d, str))
            dt = np.dtype(s.dtype)
            check_finite = dt.kind == "f" and s.name not in self.allow_nonfinite
            zeros = {} if check_finite and dt.itemsize in (4, 8) else None  # fast path cache, else exact
            self._checks.append((s.name, dt, s.rank, fixed, sym, s, check_finite, zeros))
        self._run = backend.run

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def __repr__(self) -> str:
        ins = ", ".join(s.describe() for s in self.inputs)
        return f"<edgekit Session backend={self.backend.name} inputs=[{ins}]>"

    def check(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if not isinstance(feeds, Mapping):
            raise InputError(f"inputs must be a dict of name -> array, got {type(feeds).__name__}",
                             f"pass {{{', '.join(repr(n) for n in sorted(self._names))}: array}}")
        if feeds.keys() != self._names:
            self._name_error(feeds)
        out = feeds if all(type(feeds[n]) is np.ndarray for n in self._names) else {
            k: _as_array(v) for k, v in feeds.items()}
        symbols: dict[str, int] = {}
        for name, dtype, rank, fixed, sym, spec, check_finite, zeros in self._checks:
            a = out[name]
            if a.dtype != dtype:
                raise InputDtypeError(f"input {name!r} has dtype {a.dtype}, the model expects {dtype}",
                                      f"convert it with array.astype(np.{dtype})")
            shape = a.shape
            if len(shape) != rank:
                raise InputRankError(f"input {name!r} has rank {len(shape)} (shape {list(shape)}), "
                                     f"the model expects rank {rank} {list(spec.shape)}",
                                     "reshape it, e.g. add the batch axis with array[None]")
            for axis, want in fixed:
                if shape[axis] != want:
                    raise InputShapeError(f"input {name!r} has size {shape[axis]} on axis {axis}, the model "
                                          f"needs {want} (expected {list(spec.shape)}, got {list(shape)})",
                                          "resize the input or re-export with --dynamic for that axis")
            for axis, symbol in sym:
                seen = symbols.setdefault(symbol, shape[axis])
                if seen != shape[axis]:
                    raise InputShapeError(f"dimension {symbol!r} is {seen} in one input but {shape[axis]} in "
                                          f"input {name!r} (axis {axis})",
                                          f"give every input the same {symbol!r} size")
            if not a.size:
                raise InputShapeError(f"input {name!r} is empty (shape {list(shape)})",
                                      "pass at least one sample: every axis needs a size of 1 or more")
            if check_finite and not _finite(a, zeros):
                raise NonFiniteInputError(f"input {name!r} holds NaN or infinite values",
                                          "clean the input (np.nan_to_num); if the model takes them (e.g. -inf "
                                          f"masks) load with allow_nonfinite=[{name!r}] (CLI: "
                                          f"EDGEKIT_ALLOW_NONFINITE={name})")
        return out

    def _name_error(self, feeds: Mapping[str, Any]) -> None:
        given = set(feeds)
        unknown = sorted(given - self._names)
        missing = sorted(self._names - given)
        expected = ", ".join(s.describe() for s in self.inputs)
        if unknown:
            raise InputNameError(f"unknown input name {unknown[0]!r}" + (f" (missing {missing})" if missing else ""),
                                 f"this model's inputs are {expected}")
        raise InputNameError(f"missing input {missing[0]!r}", f"this model's inputs are {expected}")

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        feeds = self.check(feeds)
        try:
            return self._run(feeds)
        except EdgekitError:
            raise
        except Exception as e:  # backend libraries raise their own types
            shapes = ", ".join(f"{k}{list(np.shape(v))}" for k, v in feeds.items())
            raise InferenceError(f"{self.backend.name} failed on inputs {shapes}: {type(e).__name__}: "
                                 f"{first_line(e, 240)}",
                                 "check the inputs against the model's expectations; the session stays usable") from e

    __call__ = run

    def run_raw(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The backend call without input checks (for trusted, hot loops)."""
        return self._run(feeds)
