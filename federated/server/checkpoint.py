"""Atomic server checkpoint: the core model, its version, the served EMA, the strategy's state
(its buffer and history: ``Strategy.state_dict``) and the curve so far.

One file ``<dir>/server.ckpt.npz``, written to a temporary file in the same directory, flushed and
fsynced, then ``os.replace``d over the old one: a crash at any moment leaves the previous complete
checkpoint or the new complete one, never a half-written file. Arrays are npz members; everything
else is a JSON header member. Every member is CRC-checked by the zip format when read.

A checkpoint that cannot be used (truncated, zero-length, flipped bits, missing keys, another
format) is a :class:`CheckpointError` naming the file and the fix: never a raw zip or key error,
and never a silent restart from scratch. A non-finite core model is never written.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.core.errors import EdgekitError

from ..errors import CheckpointError
from ..state import State

CKPT_NAME = "server.ckpt.npz"
FORMAT = "edgekit.federated.checkpoint/2"
FIX = ("move the file away (or pass another --checkpoint-dir) to start a new run, or restore it from a copy; "
       "edgekit never starts over on its own")


@dataclass
class ServerState:
    method: str
    core: State
    version: int
    accepted: int = 0  # updates accepted so far (buffered or already aggregated)
    meta: dict = field(default_factory=dict)  # the curve, counters ...
    served: State | None = None  # the served EMA of the core (None: the core itself)
    strategy: dict = field(default_factory=dict)  # Strategy.state_dict(): arrays and JSON values


def atomic_write(path: Path, write, binary: bool = False) -> None:
    """``write(fh)`` into a temporary beside ``path``, flushed and fsynced, then ``os.replace``d over
    it: readers see the old file or the new one, never a partial one; the temporary never survives
    a failure."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, obj: dict) -> None:
    """The server's result JSON (``--out``), written atomically; an unwritable path is a user error."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(p, lambda fh: json.dump(obj, fh, indent=1))
    except OSError as err:
        raise EdgekitError(f"cannot write the result to {p}: {err.strerror}", "pass a writable --out path") from err


def checkpoint_path(directory: str | os.PathLike) -> Path:
    return Path(directory) / CKPT_NAME


def _finite(state: State) -> bool:
    return all(np.isfinite(v).all() for v in state.values() if np.asarray(v).dtype.kind == "f")


def save(directory: str | os.PathLike, st: ServerState) -> Path:
    if not st.core or not _finite(st.core) or (st.served is not None and not _finite(st.served)):
        raise CheckpointError(f"refusing to checkpoint a non-finite core model into {directory}",
                              "this is a bug: the server checks every core before it commits it")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {f"core/{k}": v for k, v in st.core.items()}
    arrays.update({f"served/{k}": v for k, v in (st.served or {}).items()})
    arrays.update({f"strategy/{k}": v for k, v in st.strategy.items() if isinstance(v, np.ndarray)})
    header = {"format": FORMAT, "method": st.method, "version": st.version, "accepted": st.accepted,
              "meta": st.meta, "strategy": {k: v for k, v in st.strategy.items() if not isinstance(v, np.ndarray)}}
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    atomic_write(d / CKPT_NAME, lambda fh: np.savez(fh, **arrays), binary=True)
    try:  # make the rename itself durable
        dfd = os.open(d, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
    except OSError:
        pass
    return d / CKPT_NAME


def _read(p: Path) -> tuple[dict, dict]:
    """(header, arrays) of the file; CheckpointError for anything unreadable."""
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} is not a regular file", FIX)
    try:
        with np.load(p, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("not an npz archive")
            header = json.loads(bytes(z["__header__"]).decode())
            arrays = {k: z[k] for k in z.files if k != "__header__"}
    except Exception as err:  # noqa: BLE001 - zip, npy, JSON and I/O errors all mean: unusable
        why = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        raise CheckpointError(f"checkpoint {p} is unreadable or damaged ({why[:200]})", FIX) from err
    return header, arrays


def _field(header: dict, key: str, kind, p: Path, minimum: int | None = None):
    v = header.get(key)
    if not isinstance(v, kind) or isinstance(v, bool) or (minimum is not None and v < minimum):
        raise CheckpointError(f"checkpoint {p}: its header's {key!r} is missing or malformed ({v!r})", FIX)
    return v


def load(directory: str | os.PathLike) -> ServerState | None:
    """The last complete checkpoint in ``directory``, or None if there is none."""
    p = checkpoint_path(directory)
    if not p.exists() and not p.is_symlink():
        return None
    header, arrays = _read(p)
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        got = header.get("format") if isinstance(header, dict) else None
        raise CheckpointError(f"checkpoint {p} has format {got!r}, expected {FORMAT}",
                              "it was written by another edgekit version: finish that run with it, or " + FIX)
    method = _field(header, "method", str, p)
    version = _field(header, "version", int, p, 0)
    accepted = _field(header, "accepted", int, p, 0)
    meta = _field(header, "meta", dict, p)
    strategy = _field(header, "strategy", dict, p)
    if not isinstance(meta.get("curve"), list):
        raise CheckpointError(f"checkpoint {p}: its header has no curve", FIX)
    core = {k[5:]: v for k, v in arrays.items() if k.startswith("core/")}
    served = {k[7:]: v for k, v in arrays.items() if k.startswith("served/")} or None
    if not core or not _finite(core) or (served is not None and not _finite(served)):
        raise CheckpointError(f"checkpoint {p}: the core model is missing or not finite", FIX)
    strategy.update({k[9:]: v for k, v in arrays.items() if k.startswith("strategy/")})
    return ServerState(method, core, version, accepted, meta, served, strategy)
