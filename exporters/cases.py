"""Validation cases of one graph and their PyTorch reference outputs, each computed once per export.

The base cases (validate.make_cases: the example, a random case, other sizes of dynamic axes) are
judged for every artifact; further groups are added on demand and their references computed once:
``holdout`` (calibration samples held out of int8 calibration), ``evidence`` (the example at other
magnitudes + calibration samples, for graphs whose trace baked in Python control flow).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from edgekit.exporters.adapter import reference

from edgekit.core.errors import ExportError, UsageError, first_line
from edgekit.core.specs import TensorSpec


class GraphCases:
    """The base cases + references of one graph, and named extra groups computed lazily."""

    def __init__(self, src: Any, module: Any, base: list[dict]) -> None:
        self.src, self.module = src, module
        self.cases, self.refs, self.dropped = references(src, module, base)
        self._groups: dict[str, tuple[list[dict], list[dict], list[str]]] = {}
        self.seconds = 0.0

    def group(self, name: str, make: Callable[[], list[dict]]) -> tuple[list[dict], list[dict], list[str]]:
        """(cases, refs, dropped) of an extra group; cases PyTorch itself rejects are dropped (noted)."""
        if name not in self._groups:
            import time

            t0 = time.perf_counter()
            self._groups[name] = references(self.src, self.module, make(), first_is_example=False)
            self.seconds += time.perf_counter() - t0
        return self._groups[name]


def references(src: Any, module: Any, cases: list[dict], first_is_example: bool = True) -> tuple[list[dict], list[dict], list[str]]:
    """Reference outputs per case; random cases the model itself rejects are dropped (noted)."""
    names = list(src.example_inputs)
    keep, refs, dropped = [], [], []
    sess = None
    for i, case in enumerate(cases):
        try:
            if module is not None:
                r = reference(module, [case], names, src.output_names)[0]
            else:
                if sess is None:
                    import onnxruntime as ort

                    sess = ort.InferenceSession(str(src.onnx_path), providers=["CPUExecutionProvider"])
                r = dict(zip(src.output_names, sess.run(src.output_names, case)))
        except Exception as e:
            if isinstance(e, UsageError):  # e.g. output names that do not fit the outputs
                raise
            if i == 0 and first_is_example:
                raise fails_on_example(e) from e
            dropped.append(f"case {i} ({', '.join(f'{k}{list(v.shape)}' for k, v in case.items())}): "
                           f"{type(e).__name__}: {first_line(e, 200)}")
            continue
        keep.append(case)
        refs.append(r)
    return keep, refs, dropped


def unvalidated_dynamic(src: Any, cases: list[dict], dropped: list[str]) -> UsageError | None:
    """A dynamic axis the model itself rejects at every other size tried is declared but never validated."""
    for n, axes in (src.dynamic or {}).items():
        for ax, sym in axes.items():
            size = src.example_inputs[n].shape[ax]
            if not any(c[n].shape[ax] != size for c in cases):
                return UsageError(f"--dynamic {n}:{ax}={sym}: the model itself fails when {sym!r} is not {size} "
                                  f"({dropped[0] if dropped else 'no other size was tried'})",
                                  f"drop the dynamic axis {n}:{ax} (the model needs size {size} there)")
    return None


def insensitive(cases: list[dict], refs: list[dict]) -> list[str]:
    """A caveat when the example and the random same-shape case give identical outputs: either the
    inputs did not differ (e.g. integer inputs with one value) or the outputs do not depend on them
    (e.g. a zero-initialised head) -- then validation cannot tell a right graph from a wrong one."""
    if len(refs) < 2 or any(np.shape(v) != np.shape(cases[1][k]) for k, v in cases[0].items()):
        return []
    if not all(np.array_equal(refs[0][k], refs[1][k], equal_nan=np.asarray(refs[0][k]).dtype.kind == "f")
               for k in refs[0]):
        return []
    same = [k for k in cases[0] if np.array_equal(cases[0][k], cases[1][k])]
    why = (f"input(s) {same} took a single value in the example, so the random case repeated it"
           if same else "the outputs did not change with the inputs")
    return [f"validation is weak: the example and a random input gave identical outputs ({why}); "
            "give example inputs with representative values (Python: example_inputs; CLI: a MODEL "
            "function returning (module, example_inputs))"]


def fails_on_example(e: Exception) -> ExportError:
    return ExportError(f"the model fails on its own example inputs: {type(e).__name__}: {first_line(e)}",
                       "check the example input names, shapes and dtypes (--input NAME:SHAPE[:DTYPE])")


def output_specs(names: list[str], refs: list[dict], cases: list[dict], inputs: list[TensorSpec]) -> list[TensorSpec]:
    sym_sizes: list[dict[str, int]] = []
    for case in cases:
        sizes: dict[str, int] = {}
        for spec in inputs:
            for ax, d in enumerate(spec.shape):
                if isinstance(d, str):
                    sizes[d] = case[spec.name].shape[ax]
        sym_sizes.append(sizes)
    specs = []
    for n in names:
        shapes = [np.shape(r[n]) for r in refs]
        dims: list[int | str] = []
        for ax, d in enumerate(shapes[0]):
            seen = [s[ax] for s in shapes]
            if all(v == d for v in seen):
                dims.append(int(d))
                continue
            match = [s for s in sym_sizes[0] if all(ss.get(s) == v for ss, v in zip(sym_sizes, seen))]
            dims.append(match[0] if match else f"{n}_dim{ax}")
        specs.append(TensorSpec(n, np.asarray(refs[0][n]).dtype.name, tuple(dims)))
    return specs
