"""The CLI's example inputs: ``--input NAME:SHAPE[:DTYPE]`` and ``--dynamic NAME:AXIS=DIM`` parsing and
the random example arrays drawn for them. Torch-free."""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from edgekit.core.errors import UsageError

_DTYPES = {"float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool"}


def parse_input(spec: str) -> tuple[str, tuple[int, ...], str]:
    """``NAME:SHAPE[:DTYPE]`` with SHAPE like 1x3x224x224 or 1,3,224,224."""
    m = re.fullmatch(r"([^:]+):([0-9x,]+)(?::(\w+))?", spec.strip())
    if not m:
        raise UsageError(f"cannot parse --input {spec!r}", "use NAME:SHAPE[:DTYPE], e.g. x:1x3x224x224:float32")
    dtype = m.group(3) or "float32"
    if dtype not in _DTYPES:
        raise UsageError(f"unknown dtype {dtype!r} in --input {spec!r}", f"use one of {', '.join(sorted(_DTYPES))}")
    shape = tuple(int(d) for d in re.split(r"[x,]", m.group(2)) if d)
    return m.group(1), shape, dtype


def parse_dynamic(specs: list[str]) -> dict[str, dict[int, str]]:
    """``NAME:AXIS=DIM`` (repeatable), e.g. x:0=batch input_ids:1=seq."""
    out: dict[str, dict[int, str]] = {}
    for spec in specs:
        m = re.fullmatch(r"([^:]+):(\d+)=(\w+)", spec.strip())
        if not m:
            raise UsageError(f"cannot parse --dynamic {spec!r}", "use NAME:AXIS=DIM, e.g. x:0=batch")
        out.setdefault(m.group(1), {})[int(m.group(2))] = m.group(3)
    return out


# not the seed of validate.make_cases (0): its "random" case would replay the example's own draws
EXAMPLE_SEED = 1


def random_example(shape: Any, dtype: Any, rng: np.random.Generator) -> np.ndarray:
    """float: standard normal; integer/bool inputs (ids, masks): 0s and 1s, valid for any vocabulary
    and not all one value (validation draws integer cases from the values seen in the example)."""
    return (rng.standard_normal(shape) if np.dtype(dtype).kind == "f" else rng.integers(0, 2, size=shape)).astype(dtype)


def examples_from_specs(inputs: list[str], seed: int = EXAMPLE_SEED) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ex = {}
    for spec in inputs:
        name, shape, dtype = parse_input(spec)
        ex[name] = random_example(shape, dtype, rng)
    return ex
