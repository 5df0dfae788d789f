"""TensorSpec: name, dtype and shape (ints for fixed dims, strings for symbolic ones). Torch-free."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

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
