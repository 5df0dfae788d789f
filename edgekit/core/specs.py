"""TensorSpec: name, dtype and shape (ints for fixed dims, strings for symbolic ones). Torch-free."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from edgekit.core.errors import UsageError

Dim = int | str


def _dtype_name(dtype: Any) -> str:
    return np.dtype(dtype).name


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", _dtype_name(self.dtype))
        dims = []
        for d in self.shape:
            if isinstance(d, (int, np.integer)) and not isinstance(d, bool):
                dims.append(int(d))
            elif isinstance(d, str) and d:
                dims.append(d)
            else:
                raise ValueError(f"TensorSpec {self.name!r}: dim {d!r} must be an int or a symbol name")
        object.__setattr__(self, "shape", tuple(dims))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_dynamic(self) -> bool:
        return any(isinstance(d, str) for d in self.shape)

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict) -> "TensorSpec":
        return cls(d["name"], d["dtype"], tuple(d["shape"]))

    @classmethod
    def from_array(cls, name: str, array: Any, dynamic: dict[int, str] | None = None) -> "TensorSpec":
        shape = list(np.shape(array))
        for axis, sym in (dynamic or {}).items():
            shape[int(axis)] = sym
        dtype = _torch_np_dtype(array) if hasattr(array, "dtype") else np.asarray(array).dtype.name
        return cls(name, dtype, tuple(shape))

    def describe(self) -> str:
        return f"{self.name}: {self.dtype}[{', '.join(str(d) for d in self.shape)}]"


def _torch_np_dtype(array: Any) -> str:
    """numpy dtype name of a numpy array or a torch tensor (without importing torch)."""
    dt = array.dtype
    if isinstance(dt, np.dtype):
        return dt.name
    return str(dt).replace("torch.", "")  # torch.float32 -> float32, torch.int64 -> int64


def specs_to_list(specs: Iterable[TensorSpec]) -> list[dict]:
    return [s.to_dict() for s in specs]


def specs_from_list(items: Sequence[dict]) -> list[TensorSpec]:
    return [TensorSpec.from_dict(d) for d in items]


def check_dynamic(dynamic: Any, example: dict[str, np.ndarray]) -> dict[str, dict[int, str]] | None:
    """Validate and normalise ``{input: {axis: symbol}}`` against the example inputs (negative axes allowed)."""
    if not dynamic:
        return None
    if not isinstance(dynamic, dict) or not all(isinstance(a, dict) for a in dynamic.values()):
        raise UsageError(f"dynamic must map input name -> {{axis: symbol}}, got {dynamic!r}",
                         'e.g. dynamic={"x": {0: "batch"}} (CLI: --dynamic x:0=batch)')
    out: dict[str, dict[int, str]] = {}
    for name, axes in dynamic.items():
        if name not in example:
            raise UsageError(f"--dynamic names input {name!r}, but the model's inputs are {list(example)}",
                             "use one of the model's input names")
        rank = np.ndim(example[name])
        for ax, sym in axes.items():
            if not isinstance(ax, (int, np.integer)) or not -rank <= int(ax) < rank:
                raise UsageError(f"--dynamic {name}:{ax}: input {name!r} has rank {rank}",
                                 f"use an axis between 0 and {rank - 1}")
            if not isinstance(sym, str) or not sym:
                raise UsageError(f"--dynamic {name}:{ax}: the dimension name must be a non-empty string, got {sym!r}",
                                 "name it, e.g. batch or seq")
            out.setdefault(name, {})[int(ax) % rank] = sym
    sizes: dict[str, tuple[str, int]] = {}
    for name, axes in out.items():
        for ax, sym in axes.items():
            first = sizes.setdefault(sym, (f"{name}:{ax}", np.shape(example[name])[ax]))
            if first[1] != np.shape(example[name])[ax]:
                raise UsageError(f"dynamic dimension {sym!r} is {first[1]} at {first[0]} but "
                                 f"{np.shape(example[name])[ax]} at {name}:{ax} in the example inputs",
                                 f"give the example inputs one size for {sym!r}, or use two dimension names")
    return out
