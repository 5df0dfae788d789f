"""The edgekit bundle: a directory ``NAME.edgekit/`` holding ``manifest.json`` and artifact files.

Writing is atomic (everything is staged in a hidden sibling directory, then switched into place,
see publish.py). Loading reads the manifest under caps and checks every field's type and every
path (manifest.py), and treats the directory as untrusted (fsafe.py): only regular files and
directories, no links, nothing that blocks. Checksums are checked for every file used:
``verify=True`` ("all") checks every file at load, ``verify="used"`` (what ``edgekit.load`` does)
checks an artifact or file when it is first asked for, so one damaged artifact does not block the
others. Torch-free.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

from edgekit.core import fsafe, publish
from edgekit.core.errors import (
    BundleError,
    ChecksumError,
    DiskFullError,
    MissingFileError,
    UsageError,
)
from edgekit.core.manifest import (  # noqa: F401 - the bundle API re-exports the manifest types
    FORMAT,
    FORMAT_VERSION,
    STATUSES,
    Artifact,
    Graph,
    Manifest,
    Validation,
    check_rel,
    read_manifest,
)
from edgekit.core.version import __version__

SUFFIX = ".edgekit"
DAMAGED_FIX = "copy the bundle again or re-export it (`edgekit info` shows which artifacts are intact)"
VERIFY_MODES = {True: "all", "all": "all", "used": "used", False: "none", "none": "none"}
# staging/work directories in use: removed by remove_work_dirs() when the process is terminated
WORK_DIRS: set[Path] = set()


def check_name(name: str) -> str:
    """A bundle name is one visible path component: ``out/NAME.edgekit`` must stay inside ``out``."""
    bad = (not name or name in (".", "..") or name.startswith(".") or any(c in name for c in "/\\\0")
           or name.strip() != name)
    if bad:
        raise UsageError(f"bundle name {name!r} is not a plain file name (the bundle must land inside --out, "
                         "visible)", "use letters, digits, '-', '_' (no '/', no leading '.'), e.g. --name my-model")
    return name


def remove_work_dirs() -> None:
    """Remove every staging/work directory still registered (the CLI's SIGTERM handler calls this)."""
    for d in list(WORK_DIRS):
        shutil.rmtree(d, ignore_errors=True)
        WORK_DIRS.discard(d)


def make_work_dir(prefix: str, dir: str | os.PathLike | None = None, suffix: str = "") -> Path:
    """tempfile.mkdtemp, registered in WORK_DIRS (forget it with ``WORK_DIRS.discard``)."""
    d = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=dir))
    WORK_DIRS.add(d)
    return d


def safe_join(root: Path, rel: str) -> Path:
    """``root / rel`` for a plain relative path (no absolute path, '..', NUL, backslash or drive)."""
    return Path(root) / check_rel(rel)


class Bundle:
    """A loaded bundle. ``Bundle.load(path)`` checks it; ``bundle.path(artifact)`` / ``bundle.file(rel)``
    give a verified file (a damaged one raises ChecksumError / MissingFileError / UnsafeFileError)."""

    def __init__(self, root: Path, manifest: Manifest, verify: bool | str = "used"):
        self.root = Path(root)
        self.manifest = manifest
        self.verify_mode = VERIFY_MODES[verify]
        self._ok: dict[str, str] = {}  # rel -> sha256 already verified

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool | str = True) -> "Bundle":
        """Read and check a bundle. ``verify``: True/"all" checks every file now (the first damage
        raises); "used" checks each artifact/file when it is asked for; False checks no content
        (the file-type rules still apply)."""
        if not isinstance(verify, (bool, str)) or verify not in VERIFY_MODES:
            raise UsageError(f"verify={verify!r} is not a verification mode", 'use True, "used" or False')
        root = Path(path)
        if root.name == "manifest.json" and stat.S_ISREG(_lstat_mode(root)):
            root = root.parent
        if not os.path.lexists(root):
            publish.recover(root, remove=False)  # an export killed while swapping leaves the old bundle beside
        if not os.path.lexists(root):
            raise MissingFileError(f"bundle {str(root)!r} does not exist",
                                   "check the path; `edgekit export` prints where it wrote the bundle")
        if not root.is_dir():
            raise MissingFileError(f"{str(root)!r} is not a directory, so it is not an edgekit bundle",
                                   "point at the NAME.edgekit directory written by `edgekit export`")
        if not os.path.lexists(root / "manifest.json"):
            raise MissingFileError(f"{str(root)!r} has no manifest.json, so it is not an edgekit bundle",
                                   "point at the NAME.edgekit directory written by `edgekit export`")
        bundle = cls(root, read_manifest(root), verify)
        if bundle.verify_mode == "all":
            bundle.verify()
        return bundle

    def entries(self) -> Iterable[tuple[str, str, int]]:
        """(path, sha256, bytes) of every file the manifest lists (artifacts that have a file, then files)."""
        for a in self.manifest.artifacts:
            if a.sha256:  # artifacts that failed before producing a file have none
                yield a.path, a.sha256, a.bytes
        for rel, info in self.manifest.files.items():
            yield rel, info["sha256"], info.get("bytes", -1)

    def check(self, rel: str, sha256: str, size: int = -1) -> Path:
        """The verified path of one entry (verified once per bundle object; per ``verify_mode``)."""
        p = fsafe.inside(self.root, check_rel(rel))
        if self.verify_mode == "none" or self._ok.get(rel) == sha256:
            if self.verify_mode == "none":
                fsafe.check_tree(p, rel)
            return p
        st = fsafe.lstat(p, rel)
        if stat.S_ISREG(st.st_mode) and size > 0 and st.st_size != size:  # cheap, before hashing
            raise ChecksumError(f"bundle file {rel!r} is corrupt (size {st.st_size} bytes != manifest {size})",
                                DAMAGED_FIX)
        actual, _n = fsafe.tree_digest(p, rel)
        if actual != sha256:
            raise ChecksumError(f"bundle file {rel!r} is corrupt (sha256 {actual[:12]}… != manifest {sha256[:12]}…)",
                                DAMAGED_FIX)
        self._ok[rel] = sha256
        return p

    def verify(self) -> None:
        """Check every file the manifest lists; the first damaged one raises."""
        for rel, digest, size in self.entries():
            self.check(rel, digest, size)

    def damage(self, rel: str, sha256: str, size: int = -1) -> str | None:
        """None when the entry is intact, else why it is not (one line)."""
        try:
            self.check(rel, sha256, size)
        except BundleError as e:
            return e.message
        return None

    def integrity(self) -> dict[str, str | None]:
        """{path: None (intact) or why it is damaged} for every file the manifest lists (never raises)."""
        return {rel: self.damage(rel, digest, size) for rel, digest, size in self.entries()}

    def path(self, artifact: Artifact) -> Path:
        """The verified file (or directory) of ``artifact``."""
        if not artifact.sha256 and self.verify_mode != "none":
            raise BundleError(f"artifact {artifact.describe()} has no checksum (status {artifact.status}), "
                              "so it cannot be verified or used", "re-export the bundle")
        if not artifact.sha256:
            return self.check(artifact.path, "")
        return self.check(artifact.path, artifact.sha256, artifact.bytes)

    def file(self, rel: str) -> Path:
        """The verified path of a file listed in the manifest's ``files``."""
        if rel not in self.manifest.files:
            raise MissingFileError(f"bundle {self.root.name} carries no file {rel!r}",
                                   f"files in this bundle: {sorted(self.manifest.files) or 'none'}")
        info = self.manifest.files[rel]
        return self.check(rel, info["sha256"], info.get("bytes", -1))

    def find(self, target: str | None = None, graph: str = "main", precision: str | None = None,
             usable: bool = True) -> Artifact | None:
        for a in self.manifest.artifacts:
            if a.graph != graph or (target and a.target != target) or (precision and a.precision != precision):
                continue
            if usable and a.status in ("failed", "pending-build"):
                continue
            return a
        return None

    def graph(self, name: str) -> "Graph":
        try:
            return self.manifest.graphs[name]
        except KeyError:
            raise BundleError(f"bundle {self.root.name} has no graph {name!r}",
                              f"graphs: {', '.join(self.manifest.graphs)}") from None


def _lstat_mode(p: Path) -> int:
    try:
        return os.lstat(p).st_mode
    except OSError:
        return 0


def _disk_full(exc: BaseException | None) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return True
    return exc is not None and "No space left on device" in str(exc)


class BundleWriter:
    """Stage a bundle in a hidden directory beside ``out/NAME.edgekit`` and switch it into place.

    Use as a context manager; if the block raises, the staging directory is removed and any
    previous bundle at the destination is left untouched. A full disk is one DiskFullError.
    Entering also cleans up what an interrupted export to the same destination left behind.
    """

    def __init__(self, out_dir: str | os.PathLike, name: str):
        self.out_dir = Path(out_dir)
        self.name = check_name(name)
        self.dest = self.out_dir / (name if name.endswith(SUFFIX) else name + SUFFIX)
        self.stage: Path | None = None
        self.notes: list[str] = []

    def __enter__(self) -> "BundleWriter":
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise UsageError(f"output directory {str(self.out_dir)!r} cannot be made: a file is in the way",
                             "choose another --out directory (or move the file)") from None
        except OSError as e:
            if _disk_full(e):
                raise self._full(e) from None
            raise UsageError(f"output directory {str(self.out_dir)!r} cannot be made ({e.strerror})",
                             "choose a writable --out directory") from None
        self.notes = publish.recover(self.dest)
        self.stage = make_work_dir(publish.stage_prefix(self.dest), self.out_dir, ".tmp")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.stage is not None:
            if self.stage.exists():
                shutil.rmtree(self.stage, ignore_errors=True)
            WORK_DIRS.discard(self.stage)
            self.stage = None
        if _disk_full(exc) and not isinstance(exc, DiskFullError):
            raise self._full(exc) from exc

    def _full(self, exc: BaseException) -> DiskFullError:
        path = getattr(exc, "filename2", None) or getattr(exc, "filename", None)  # copyfile: 2 = destination
        path = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else None
        stage = str(self.stage or self.dest.with_name(publish.stage_prefix(self.dest)))
        where = self.out_dir if not path or str(path).startswith(stage) else Path(path).parent
        return DiskFullError(f"no space left on the device holding {where}; the export stopped and "
                             f"{self.dest} was left as it was",
                             "free some disk space, or choose another --out (and TMPDIR for work files)")

    def add(self, rel: str, src: str | os.PathLike | bytes) -> Path:
        """Copy a file or directory (or write bytes) to ``rel`` inside the staged bundle."""
        assert self.stage is not None, "use BundleWriter as a context manager"
        dst = safe_join(self.stage, rel)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, (bytes, bytearray)):
            dst.write_bytes(src)
        elif Path(src).is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copyfile(src, dst)
        return dst

    def record(self, artifact: Artifact) -> Artifact:
        """Fill sha256/bytes of an artifact already added at ``artifact.path``."""
        assert self.stage is not None
        artifact.sha256, artifact.bytes = fsafe.tree_digest(safe_join(self.stage, artifact.path), artifact.path)
        return artifact

    def add_file(self, manifest: Manifest, rel: str, src: str | os.PathLike | bytes) -> None:
        p = self.add(rel, src)
        digest, size = fsafe.tree_digest(p, rel)
        manifest.files[rel] = {"sha256": digest, "bytes": size}

    def commit(self, manifest: Manifest) -> Path:
        assert self.stage is not None
        manifest.producer = {"edgekit": __version__, **manifest.producer}
        manifest.created = manifest.created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        (self.stage / "manifest.json").write_text(json.dumps(manifest.to_dict(), indent=2, default=_json_default))
        Bundle.load(self.stage)  # refuse to publish a bundle that would not load
        os.chmod(self.stage, 0o755)  # mkdtemp made it private
        publish.publish(self.stage, self.dest)
        WORK_DIRS.discard(self.stage)
        self.stage = None
        return self.dest


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
