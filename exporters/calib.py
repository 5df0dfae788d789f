"""Calibration data for int8 post-training quantization (OpenVINO/NNCF, TensorRT, ONNX Q/DQ).

``load_calibration(calib, inputs)`` turns whatever the user gave into a list of input dicts
``[{input_name: np.ndarray}, ...]``, one dict per forward pass, each array with the model's rank:

* ``None`` -> ``None`` (no calibration set);
* a path to an ``.npz`` file: one key per model input (a single-input model also accepts any one
  key); arrays of the input's rank are split along axis 0 into batch-1 samples, arrays of rank+1
  are taken as a stack of whole inputs;
* a path to a directory of ``.npy`` files: either ``<input name>.npy`` per input (as for .npz) or,
  for a single-input model, one sample per file (sorted by file name);
* a numpy array (or torch tensor) for a single-input model, split like an .npz entry;
* a mapping ``{name: array}`` (as for .npz);
* an iterable of mappings ``{name: array}``, one sample each.

Torch-free (torch tensors are converted through ``.detach().cpu().numpy()`` if given).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from edgekit.core.errors import DataError
from edgekit.core.specs import TensorSpec

DEFAULT_LIMIT = 300  # NNCF's default subset size; more samples rarely change int8 ranges

_HINT = ("pass an .npz with one array per input (keys: {names}), a directory of .npy files, "
         "an array, or an iterable of {{name: array}} dicts")


def _as_numpy(x: Any, where: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor without importing torch
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as e:  # noqa: BLE001 - anything numpy cannot take is a data error
        raise DataError(f"calibration data {where} is not array-like ({type(x).__name__}: {e})") from None


def _coerce(arr: np.ndarray, spec: TensorSpec, where: str) -> np.ndarray:
    want = np.dtype(spec.dtype)
    if arr.dtype == want:
        return arr
    if want.kind == "f" and arr.dtype.kind in "fiub":
        return arr.astype(want)
    if want.kind in "iu" and arr.dtype.kind in "iub":
        return arr.astype(want)
    if want.kind == "b" and arr.dtype.kind in "biu":
        return arr.astype(want)
    raise DataError(f"calibration input {spec.name!r} {where} has dtype {arr.dtype.name}, "
                    f"the model expects {spec.dtype}",
                    f"save {spec.name!r} as {spec.dtype}")


def _check_shape(arr: np.ndarray, spec: TensorSpec, where: str) -> None:
    if arr.ndim != spec.rank:
        raise DataError(f"calibration input {spec.name!r} {where} has rank {arr.ndim} (shape {arr.shape}), "
                        f"the model expects rank {spec.rank} {spec.describe()}",
                        "give one sample per entry with the model's input rank")
    for axis, (got, want) in enumerate(zip(arr.shape, spec.shape)):
        if isinstance(want, int) and axis > 0 and got != want:
            raise DataError(f"calibration input {spec.name!r} {where} has shape {arr.shape}, "
                            f"the model expects {spec.describe()}",
                            "resize/pad the calibration samples to the model's input shape")


def _split(arr: np.ndarray, spec: TensorSpec, where: str) -> list[np.ndarray]:
    """Samples of one input from a stacked array (rank+1) or a batch array (rank)."""
    if arr.ndim == spec.rank + 1:
        return [arr[i] for i in range(arr.shape[0])]
    if arr.ndim == spec.rank:
        return [arr[i:i + 1] for i in range(arr.shape[0])]
    raise DataError(f"calibration array for {spec.name!r} {where} has shape {arr.shape}; "
                    f"expected rank {spec.rank} (a batch) or {spec.rank + 1} (a stack of inputs) "
                    f"for {spec.describe()}", "reshape the calibration array")


def _from_mapping(data: Mapping[str, Any], specs: Sequence[TensorSpec], where: str) -> list[dict]:
    names = [s.name for s in specs]
    keys = list(data.keys())
    if len(specs) == 1 and len(keys) == 1 and keys[0] not in names:
        data = {names[0]: data[keys[0]]}  # single input: accept any key (arr_0, x, images, ...)
    missing = [n for n in names if n not in data]
    if missing:
        raise DataError(f"calibration data {where} has no array for input(s) {missing} (keys: {keys})",
                        _HINT.format(names=names))
    columns = {s.name: _split(_as_numpy(data[s.name], where), s, where) for s in specs}
    counts = {n: len(c) for n, c in columns.items()}
    if len(set(counts.values())) != 1:
        raise DataError(f"calibration arrays {where} hold different sample counts {counts}",
                        "give every input the same number of samples")
    n = next(iter(counts.values()))
    return [{name: columns[name][i] for name in names} for i in range(n)]


def _from_dir(path: Path, specs: Sequence[TensorSpec]) -> list[dict]:
    files = sorted(p for p in path.iterdir() if p.suffix == ".npy" and p.is_file())
    if not files:
        raise DataError(f"calibration directory {str(path)!r} holds no .npy files",
                        _HINT.format(names=[s.name for s in specs]))
    by_stem = {p.stem: p for p in files}
    if all(s.name in by_stem for s in specs):
        return _from_mapping({s.name: np.load(by_stem[s.name], allow_pickle=False) for s in specs},
                             specs, f"in {path}")
    if len(specs) != 1:
        raise DataError(f"calibration directory {str(path)!r} must hold one <input>.npy per input "
                        f"({[s.name + '.npy' for s in specs]}) for a model with several inputs",
                        "save each input as NAME.npy with samples along axis 0")
    spec = specs[0]
    samples = []
    for p in files:
        arr = np.load(p, allow_pickle=False)
        if arr.ndim == spec.rank - 1:
            arr = arr[None]
        samples.append({spec.name: arr})
    return samples


def _from_iterable(items: Iterable[Any], specs: Sequence[TensorSpec], limit: int) -> list[dict]:
    names = [s.name for s in specs]
    out = []
    for i, item in enumerate(items):
        if len(out) >= limit:
            break
        if not isinstance(item, Mapping):
            if len(specs) == 1:
                item = {names[0]: item}
            else:
                raise DataError(f"calibration sample {i} is a {type(item).__name__}, not a dict of inputs",
                                _HINT.format(names=names))
        missing = [n for n in names if n not in item]
        if missing:
            raise DataError(f"calibration sample {i} lacks input(s) {missing}", _HINT.format(names=names))
        out.append({n: _as_numpy(item[n], f"sample {i}") for n in names})
    return out


def load_calibration(calib: Any, inputs: Sequence[TensorSpec], *, limit: int = DEFAULT_LIMIT,
                     ) -> list[dict[str, np.ndarray]] | None:
    """Normalise ``calib`` into ``[{name: array}]`` checked against the model's input specs."""
    if calib is None:
        return None
    specs = list(inputs)
    if not specs:
        raise DataError("the model has no inputs to calibrate")
    if isinstance(calib, (str, os.PathLike)):
        path = Path(calib)
        if not path.exists():
            raise DataError(f"calibration data {str(path)!r} does not exist",
                            "check the --calib path (an .npz file or a directory of .npy files)")
        if path.is_dir():
            samples = _from_dir(path, specs)
        elif path.suffix == ".npz":
            try:
                with np.load(path, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
            except (OSError, ValueError) as e:
                raise DataError(f"cannot read calibration file {str(path)!r}: {e}",
                                "write it with numpy.savez") from None
            samples = _from_mapping(arrays, specs, f"in {path.name}")
        elif path.suffix == ".npy":
            if len(specs) != 1:
                raise DataError(f"a single .npy ({path.name}) can only calibrate a single-input model",
                                "use an .npz with one key per input")
            samples = _from_mapping({specs[0].name: np.load(path, allow_pickle=False)}, specs, f"in {path.name}")
        else:
            raise DataError(f"calibration file {str(path)!r} is neither .npz, .npy nor a directory",
                            _HINT.format(names=[s.name for s in specs]))
    elif isinstance(calib, Mapping):
        samples = _from_mapping(calib, specs, "(dict)")
    elif isinstance(calib, np.ndarray) or hasattr(calib, "detach"):
        if len(specs) != 1:
            raise DataError(f"a bare array can only calibrate a single-input model; this one has "
                            f"{[s.name for s in specs]}", "pass a dict {name: array} or an iterable of dicts")
        samples = _from_mapping({specs[0].name: calib}, specs, "(array)")
    elif isinstance(calib, Iterable):
        samples = _from_iterable(calib, specs, limit)
    else:
        raise DataError(f"unsupported calibration data of type {type(calib).__name__}",
                        _HINT.format(names=[s.name for s in specs]))
    samples = samples[:limit]
    if not samples:
        raise DataError("the calibration set is empty", "give at least one sample (a few hundred is typical)")
    checked = []
    for i, sample in enumerate(samples):
        row = {}
        for spec in specs:
            arr = _coerce(_as_numpy(sample[spec.name], f"sample {i}"), spec, f"(sample {i})")
            _check_shape(arr, spec, f"(sample {i})")
            row[spec.name] = np.ascontiguousarray(arr)
        checked.append(row)
    return checked


def fit_batch(samples: list[dict[str, np.ndarray]] | None, inputs: Sequence[TensorSpec]) -> list[dict] | None:
    """Group samples into the model's batch size when its batch axis is fixed at a multiple of theirs
    (batch-1 samples for a graph exported with a fixed batch of 2 become pairs; a remainder is dropped),
    so every calibration sample can also be fed to the exported graph as it is."""
    fixed = {s.name: s.shape[0] for s in inputs if s.shape and isinstance(s.shape[0], int)}
    if not samples or not fixed:
        return samples
    have = {n: samples[0][n].shape[0] for n in fixed}
    if all(have[n] == b for n, b in fixed.items()) or any(not have[n] or b % have[n] for n, b in fixed.items()):
        return samples
    k = next(fixed[n] // have[n] for n in fixed)
    if any(fixed[n] // have[n] != k for n in fixed) or len(samples) < k:
        return samples
    return [{n: np.concatenate([s[n] for s in samples[i:i + k]]) for n in samples[0]}
            for i in range(0, len(samples) - k + 1, k)]


def save_calibration(samples: Sequence[Mapping[str, np.ndarray]], path: Path) -> Path:
    """Write samples as an .npz (one stacked array per input; samples must share shapes)."""
    names = list(samples[0].keys())
    np.savez(path, **{n: np.stack([s[n] for s in samples]) for n in names})
    return path
