"""Putting a staged bundle directory in place so that the destination is never lost.

At every instant the destination holds the old or the new complete bundle, or (only on systems
without an atomic directory exchange, and only between two renames) the old one sits beside it
as ``.NAME.edgekit.old-PID.X`` and the next export or load puts it back. Where the kernel offers
an exchange (Linux ``renameat2(RENAME_EXCHANGE)``, macOS ``renamex_np(RENAME_SWAP)``) the switch
is one atomic call. Staging directories carry the writer's pid (``.NAME.edgekit.PID.X.tmp``), so
the next export to the same directory removes what a killed one left behind, saying so (a
warning on the ``edgekit`` logger, which the CLI prints on stderr). Torch-free.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import shutil
import sys
from pathlib import Path

log = logging.getLogger("edgekit")
_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, getattr(errno, "ENOTSUP", -1), getattr(errno, "EOPNOTSUPP", -1)}
_LIBC = None


def stage_prefix(dest: Path) -> str:
    """Name prefix of a staging directory for ``dest`` (mkdtemp adds a random part and '.tmp')."""
    return f".{dest.name}.{os.getpid()}."


def _leftover(name: str, dest_name: str) -> tuple[str, int] | None:
    """('stage' | 'old', pid) when ``name`` is a staging or swapped-out directory of ``dest_name``."""
    m = re.fullmatch(rf"\.{re.escape(dest_name)}\.(\d+)\.[A-Za-z0-9_]+\.tmp", name)
    if m:
        return "stage", int(m.group(1))
    m = re.fullmatch(rf"\.{re.escape(dest_name)}\.old-(\d+)(\.[A-Za-z0-9_]+)?", name)
    return ("old", int(m.group(1))) if m else None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return True


def _libc():
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _LIBC = False
    return _LIBC


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths; False where this system or filesystem cannot."""
    libc = _libc()
    fs_a, fs_b = os.fsencode(a), os.fsencode(b)
    if libc and sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
        rc = libc.renameat2(-100, fs_a, -100, fs_b, 2)  # AT_FDCWD, RENAME_EXCHANGE
    elif libc and sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        rc = libc.renamex_np(fs_a, fs_b, 2)  # RENAME_SWAP
    else:
        return False
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _checkpoint(step: str) -> None:
    """Between the steps of ``publish`` (tests replace it to kill the process exactly there)."""


def publish(stage: Path, dest: Path) -> None:
    """Move the complete bundle at ``stage`` to ``dest``, replacing any bundle there."""
    _checkpoint("staged")
    if not os.path.lexists(dest):
        try:
            os.rename(stage, dest)
            return
        except OSError as e:  # a bundle appeared at dest meanwhile: replace it below
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    if exchange(stage, dest):
        _checkpoint("swapped")
        shutil.rmtree(stage, ignore_errors=True)  # the staging name now holds the previous bundle
        return
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}.{os.urandom(4).hex()}")
    os.rename(dest, old)
    _checkpoint("moved-old")
    try:
        os.rename(stage, dest)
    except BaseException:
        os.rename(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


def recover(dest: Path, remove: bool = True) -> list[str]:
    """Finish or undo what an interrupted export to ``dest`` left beside it; one note per action.

    A swapped-out previous bundle is put back when ``dest`` is missing (else removed); staging
    directories of dead writers are removed (only with ``remove``). Live writers are left alone."""
    notes: list[str] = []
    try:
        names = sorted(os.listdir(dest.parent))
    except OSError:
        return notes
    for name in names:
        found = _leftover(name, dest.name)
        if found is None or _alive(found[1]):
            continue
        what, pid = found
        path = dest.parent / name
        if what == "old" and not os.path.lexists(dest):
            try:
                os.rename(path, dest)
            except OSError:
                continue
            notes.append(f"restored the previous bundle {dest} from {name} (an export, pid {pid}, was "
                         "interrupted while replacing it)")
        elif remove:
            shutil.rmtree(path, ignore_errors=True)
            label = "staging directory" if what == "stage" else "replaced bundle"
            notes.append(f"removed {name} in {dest.parent}, the {label} of an interrupted export (pid {pid})")
    for note in notes:
        log.warning("edgekit: %s", note)
    return notes
