"""File rules for untrusted bundles: regular files and directories only, links never followed, nothing blocks.

Modelled on tarfile's ``filter="data"`` (PEP 706), stricter in one point: a bundle may hold no link
at all (symbolic links are refused whether they point inside the bundle or out; a hard link is just
a regular file to us, and its content is checked like any other). Every entry is examined with
``os.lstat`` before it is opened, and opened with ``O_NOFOLLOW | O_NONBLOCK``, then checked again
with ``fstat`` on the open descriptor, so a FIFO, device or socket is refused instead of blocking
or being read. Torch-free; imports nothing of edgekit but errors.
"""
from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import BinaryIO

from edgekit.core.errors import BundleError, MissingFileError, UnsafeFileError

OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
              | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
MAX_TREE_ENTRIES = 100_000  # files + directories inside one directory artifact
MAX_TREE_DEPTH = 32
UNSAFE_HINT = ("a bundle may hold only regular files and directories; copy it without links "
               "(cp -rL, rsync -L) or re-export it")


def kind(mode: int) -> str:
    """A file type in words, for error messages."""
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"), (stat.S_ISREG, "a file")):
        if test(mode):
            return name
    return "a special file"


def lstat(path: Path, label: str) -> os.stat_result:
    """``os.lstat`` with bundle errors: missing -> MissingFileError, anything else -> BundleError."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        raise MissingFileError(f"bundle file {label!r} named in the manifest is missing",
                               "the bundle was copied incompletely; copy the whole directory or re-export") from None
    except NotADirectoryError:
        raise UnsafeFileError(f"bundle path {label!r} runs through something that is not a directory",
                              UNSAFE_HINT) from None
    except OSError as e:
        raise BundleError(f"bundle file {label!r} cannot be examined ({e.strerror})",
                          "check the bundle's permissions") from None


def refuse(label: str, mode: int, what: str = "bundle entry", error: type[Exception] = UnsafeFileError,
           hint: str = UNSAFE_HINT) -> Exception:
    return error(f"{what} {label!r} is {kind(mode)}, not a regular file", hint)


def inside(root: Path, rel: str) -> Path:
    """``root / rel`` after checking that every directory between them is a real directory (no link).

    ``rel`` must already be a checked relative path (manifest.check_rel); the last component is
    left to the caller (a file or a directory artifact)."""
    parts = rel.split("/")
    p = root
    for i, part in enumerate(parts[:-1]):
        p = p / part
        st = lstat(p, "/".join(parts[: i + 1]))
        if not stat.S_ISDIR(st.st_mode):
            raise refuse("/".join(parts[: i + 1]), st.st_mode)
    return root / rel


def open_regular(path: Path, label: str, follow: bool = False, what: str = "bundle entry",
                 error: type[Exception] = UnsafeFileError, hint: str = UNSAFE_HINT) -> BinaryIO:
    """Open a regular file for reading without blocking on a FIFO/device (and, unless ``follow``,
    without following a link: bundle entries; a user's own input file may be a link)."""
    if not follow and error is UnsafeFileError:
        st = lstat(path, label)
    else:
        try:
            st = os.stat(path) if follow else os.lstat(path)
        except OSError as e:
            raise error(f"{what} {label!r} cannot be read ({e.strerror})", hint) from None
    if not stat.S_ISREG(st.st_mode):
        raise refuse(label, st.st_mode, what, error, hint)
    flags = OPEN_FLAGS if not follow else OPEN_FLAGS & ~getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:  # ELOOP: it became a link since lstat; ENXIO: a socket/FIFO without peer
        raise error(f"{what} {label!r} cannot be opened safely ({e.strerror})", hint) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise refuse(label, st.st_mode, what, error, hint)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_capped(path: Path, label: str, cap: int) -> bytes:
    """The whole of a regular file, refusing one larger than ``cap`` bytes before reading it."""
    with open_regular(path, label) as f:
        size = os.fstat(f.fileno()).st_size
        if size > cap:
            raise BundleError(f"{label} is {size / 2**20:.1f} MiB, more than the {cap / 2**20:.0f} MiB a bundle "
                              "may use for it", "the bundle is corrupt or hostile; re-export it")
        data = f.read(cap + 1)
    if len(data) > cap:
        raise BundleError(f"{label} grew past {cap / 2**20:.0f} MiB while being read", "re-export the bundle")
    return data


def sha256_regular(path: Path, label: str) -> tuple[str, int]:
    """sha256 and size of one regular file (opened safely)."""
    h, size = hashlib.sha256(), 0
    with open_regular(path, label) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _walk(top: Path, label: str) -> list[tuple[tuple[str, ...], Path]]:
    """Every regular file below ``top`` as (relative parts, path); any other entry type is refused."""
    files: list[tuple[tuple[str, ...], Path]] = []
    stack: list[tuple[Path, tuple[str, ...]]] = [(top, ())]
    seen = 0
    while stack:
        d, parts = stack.pop()
        if len(parts) > MAX_TREE_DEPTH:
            raise UnsafeFileError(f"bundle directory {label!r} nests deeper than {MAX_TREE_DEPTH} levels",
                                  "the bundle is corrupt or hostile; re-export it")
        try:
            entries = list(os.scandir(d))
        except OSError as e:
            raise BundleError(f"bundle directory {label!r} cannot be listed ({e.strerror})",
                              "check the bundle's permissions") from None
        for e in entries:
            seen += 1
            if seen > MAX_TREE_ENTRIES:
                raise UnsafeFileError(f"bundle directory {label!r} holds more than {MAX_TREE_ENTRIES} entries",
                                      "the bundle is corrupt or hostile; re-export it")
            sub = parts + (e.name,)
            st = e.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                stack.append((Path(e.path), sub))
            elif stat.S_ISREG(st.st_mode):
                files.append((sub, Path(e.path)))
            else:
                raise refuse("/".join((label, *sub)), st.st_mode)
    return sorted(files)


def check_tree(path: Path, label: str) -> None:
    """Refuse ``path`` unless it is a regular file, or a directory of only regular files and directories."""
    st = lstat(path, label)
    if stat.S_ISDIR(st.st_mode):
        _walk(path, label)
    elif not stat.S_ISREG(st.st_mode):
        raise refuse(label, st.st_mode)


def tree_digest(path: Path, label: str) -> tuple[str, int]:
    """sha256 and size of a regular file, or of a directory artifact: sorted relative paths + file contents.

    Every entry of a directory must be a regular file or a directory (links, FIFOs, devices are
    refused). Empty directories carry no content and are not part of the digest."""
    st = lstat(path, label)
    if stat.S_ISREG(st.st_mode):
        return sha256_regular(path, label)
    if not stat.S_ISDIR(st.st_mode):
        raise refuse(label, st.st_mode)
    h, size = hashlib.sha256(), 0
    for parts, p in _walk(path, label):
        digest, n = sha256_regular(p, "/".join((label, *parts)))
        h.update(os.fsencode("/".join(parts)) + b"\0" + digest.encode() + b"\n")
        size += n
    return h.hexdigest(), size
