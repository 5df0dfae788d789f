"""Atomic server checkpoint: core model, its version, the update buffer, and the curve so far.

One file ``<dir>/server.ckpt.npz``. It is written to a temporary file in the same directory,
flushed and fsynced, then ``os.replace``d over the old one, so a crash at any moment leaves
either the previous complete checkpoint or the new complete one, never a half-written file.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.core.errors import EdgekitError

from .models import State
from .strategies import Update

CKPT_NAME = "server.ckpt.npz"
FORMAT = "edgekit.federated.checkpoint/1"


class CheckpointError(EdgekitError):
    """A checkpoint exists but cannot be used."""


@dataclass
class ServerState:
    core: State
    version: int
    buffer: list[Update] = field(default_factory=list)
    accepted: int = 0  # updates accepted so far (buffered or already aggregated)
    meta: dict = field(default_factory=dict)  # method, curve, counters ...
    aux: State = field(default_factory=dict)  # aggregator state, e.g. the server momentum buffer


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


def cache_arrays(cache: dict[int, tuple[int, float, State]]) -> dict[str, np.ndarray]:
    """The cloned method's update cache (node -> (base version, weight, update)) as aux arrays."""
    if not cache:
        return {}
    nodes = list(cache)
    out = {"cache-nodes": np.asarray(nodes, np.uint64),  # Flower node ids are uint64
           "cache-base": np.asarray([cache[n][0] for n in nodes], np.int64),
           "cache-weight": np.asarray([cache[n][1] for n in nodes], np.float64)}
    for j, n in enumerate(nodes):
        out.update({f"cache/{j}/{k}": v for k, v in cache[n][2].items()})
    return out


def cache_from_arrays(aux: dict[str, np.ndarray]) -> dict[int, tuple[int, float, State]]:
    """The inverse of :func:`cache_arrays` (empty if the checkpoint holds no cache)."""
    if "cache-nodes" not in aux:
        return {}
    return {int(n): (int(b), float(w), {k[len(f"cache/{j}/"):]: v for k, v in aux.items()
                                         if k.startswith(f"cache/{j}/")})
            for j, (n, b, w) in enumerate(zip(aux["cache-nodes"], aux["cache-base"], aux["cache-weight"]))}


def checkpoint_path(directory: str | os.PathLike) -> Path:
    return Path(directory) / CKPT_NAME


def save(directory: str | os.PathLike, st: ServerState) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {f"core/{k}": v for k, v in st.core.items()}
    arrays.update({f"aux/{k}": v for k, v in st.aux.items()})
    for i, u in enumerate(st.buffer):
        arrays.update({f"buf{i}/{k}": v for k, v in u.state.items()})
    header = {"format": FORMAT, "version": st.version, "accepted": st.accepted,
              "buffer": [u.meta() for u in st.buffer], "meta": st.meta}
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    atomic_write(d / CKPT_NAME, lambda fh: np.savez(fh, **arrays), binary=True)
    try:  # make the rename itself durable
        dfd = os.open(d, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
    except OSError:
        pass
    return d / CKPT_NAME


def load(directory: str | os.PathLike) -> ServerState | None:
    """The last complete checkpoint in ``directory``, or None if there is none."""
    p = checkpoint_path(directory)
    if not p.exists():
        return None
    try:
        with np.load(p, allow_pickle=False) as z:
            header = json.loads(bytes(z["__header__"]).decode())
            data = {k: z[k] for k in z.files if k != "__header__"}
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {p} is unreadable: {err}",
                              "delete it to start from scratch") from err
    if header.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {p} has format {header.get('format')!r}, expected {FORMAT}")
    core = {k[5:]: v for k, v in data.items() if k.startswith("core/")}
    aux = {k[4:]: v for k, v in data.items() if k.startswith("aux/")}
    buffer = []
    for i, m in enumerate(header["buffer"]):
        pre = f"buf{i}/"
        state = {k[len(pre):]: v for k, v in data.items() if k.startswith(pre)}
        buffer.append(Update(state=state, **m))
    return ServerState(core=core, version=int(header["version"]), buffer=buffer,
                       accepted=int(header.get("accepted", 0)), meta=header.get("meta", {}), aux=aux)
