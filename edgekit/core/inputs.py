"""Reading .npz/.npy arrays safely: user input files and a bundle's ``validation/<graph>.npz``. Torch-free.

One routine (``read_arrays``) for both: the file must be a regular file (a FIFO or device is
refused, never read), an .npz's zip directory and every member's .npy header are checked against
a size cap *before* anything is allocated (a small compressed file cannot expand to gigabytes),
object arrays are refused (nothing is ever unpickled), and every problem is one error line.
"""
from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np

from edgekit.core import fsafe
from edgekit.core.errors import BundleError, DataError, MissingFileError
from edgekit.core.specs import TensorSpec

INPUT_MAX_BYTES = 2 << 30       # a user's input file, uncompressed
VALIDATION_MAX_BYTES = 64 << 20  # a bundle's validation/<graph>.npz, uncompressed
MAX_MEMBERS = 4096
NPY_MAGIC = b"\x93NUMPY"


def _npy(stream: IO[bytes], label: str, limit: int, error: type[Exception], hint: str) -> np.ndarray:
    """One array from an .npy stream whose data may take at most ``limit`` bytes (header checked first)."""
    fmt = np.lib.format
    start = stream.tell()
    try:
        version = fmt.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(stream)
        else:
            raise ValueError(f".npy format version {version} is not supported")
    except ValueError as e:
        raise error(f"{label} is not a readable .npy array ({str(e)[:160]})", hint) from None
    if dtype.hasobject:
        raise error(f"{label} holds an object array (pickled Python objects); edgekit never unpickles data",
                    "save plain numeric arrays, e.g. np.savez(f, x=array.astype(np.float32))")
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    room = limit - (stream.tell() - start)
    if nbytes > room:
        raise error(f"{label} declares a {dtype} array of shape {list(shape)} ({nbytes / 2**20:.1f} MiB) but holds "
                    f"{max(room, 0) / 2**20:.1f} MiB", hint)
    arr = np.empty(count, dtype=dtype)
    view, got = memoryview(arr.view(np.uint8)) if count else memoryview(b""), 0
    while got < nbytes:
        n = stream.readinto(view[got:])
        if not n:
            raise error(f"{label} is truncated ({got} of {nbytes} data bytes)", hint)
        got += n
    return arr.reshape(shape, order="F" if fortran else "C")


def _zip(f: IO[bytes], label: str, cap: int, error: type[Exception], hint: str) -> dict[str, np.ndarray]:
    try:
        zf = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise error(f"{label} is not a valid .npz (zip) file ({str(e)[:120]})", hint) from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise error(f"{label} holds {len(infos)} arrays, more than {MAX_MEMBERS}", hint)
        total = sum(i.file_size for i in infos)
        if total > cap:
            raise error(f"{label} expands to {total / 2**20:.1f} MiB, more than the {cap / 2**20:.0f} MiB allowed", hint)
        out: dict[str, np.ndarray] = {}
        for info in infos:
            if not info.filename.endswith(".npy"):
                raise error(f"{label} holds {info.filename!r:.80}, which is not an .npy array", hint)
            where = f"{label}[{info.filename[:-4]}]"
            try:
                with zf.open(info) as m:
                    out[info.filename[:-4]] = _npy(m, where, info.file_size, error, hint)
            except Exception as e:  # noqa: BLE001 - zlib/zipfile/CRC errors of an untrusted file
                if isinstance(e, error):
                    raise
                raise error(f"{where} cannot be read ({type(e).__name__}: {str(e)[:120]})", hint) from None
    return out


def read_arrays(path: str | os.PathLike, label: str, *, cap: int = INPUT_MAX_BYTES, bundle_file: bool = False,
                hint: str = "write it with numpy: np.savez(FILE, name=array)") -> dict[str, np.ndarray] | np.ndarray:
    """{name: array} of an .npz, or the array of an .npy (told apart by content, not by suffix).

    ``bundle_file``: the file belongs to a bundle (no links followed, problems are BundleErrors);
    else it is a user's file (DataError)."""
    error: Any = BundleError if bundle_file else DataError
    what = "bundle file" if bundle_file else "file"
    with fsafe.open_regular(Path(path), label, follow=not bundle_file, what=what, error=error, hint=hint) as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(len(NPY_MAGIC))
        f.seek(0)
        if head.startswith(b"PK"):
            return _zip(f, label, cap, error, hint)
        if head == NPY_MAGIC:
            if size > cap + 4096:
                raise error(f"{label} is {size / 2**20:.1f} MiB, more than the {cap / 2**20:.0f} MiB allowed", hint)
            return _npy(f, label, size, error, hint)
    raise error(f"{label} is neither an .npz nor an .npy file", hint)


def load_arrays(path: str | Path, inputs: list[TensorSpec], cap: int = INPUT_MAX_BYTES) -> dict[str, np.ndarray]:
    """{input name: array} from a user's file; a .npy is accepted for one-input models."""
    p = Path(path)
    if not os.path.lexists(p):
        raise MissingFileError(f"input file {str(p)!r} does not exist", "check the path given to --input")
    names = ", ".join(s.name for s in inputs)
    got = read_arrays(p, p.name, cap=cap, hint=f"write it with numpy: np.savez('{p.stem}.npz', "
                                                f"{inputs[0].name if inputs else 'x'}=array)")
    if isinstance(got, np.ndarray):
        if len(inputs) != 1:
            raise DataError(f"{p.name} holds one array but the model has {len(inputs)} inputs ({names})",
                            "save an .npz with one array per input name: np.savez(f, **arrays)")
        return {inputs[0].name: got}
    if not got:
        raise DataError(f"{p.name} contains no arrays", f"save one array per input: {names}")
    if len(inputs) == 1 and list(got) == ["arr_0"]:
        got = {inputs[0].name: got["arr_0"]}  # np.savez(f, arr) without a name stores it as arr_0
    return got


def load_validation(bundle: Any, graph: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(example inputs, reference outputs) of ``validation/<graph>.npz`` in a bundle: listed in the
    manifest, verified, capped; both parts present. Any problem is a BundleError."""
    rel = f"validation/{graph}.npz"
    if rel not in bundle.manifest.files:
        raise MissingFileError(f"bundle {bundle.root.name} lists no {rel}, so graph {graph!r} has no reference outputs",
                               "re-export the bundle (export stores the example and its PyTorch outputs)")
    got = read_arrays(bundle.file(rel), rel, cap=VALIDATION_MAX_BYTES, bundle_file=True, hint="re-export the bundle")
    if isinstance(got, np.ndarray):
        got = {}
    feeds = {k[3:]: v for k, v in got.items() if k.startswith("in.")}
    refs = {k[4:]: v for k, v in got.items() if k.startswith("out.")}
    if not feeds or not refs:
        raise BundleError(f"{rel} holds no {'example inputs (in.*)' if not feeds else 'reference outputs (out.*)'}",
                          "re-export the bundle")
    return feeds, refs
