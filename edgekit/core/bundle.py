"""The edgekit bundle: a directory ``NAME.edgekit/`` holding ``manifest.json`` and artifact files.

Writing is atomic (everything is staged in a hidden sibling directory, then renamed into place).
Loading checks the format version, that every path stays inside the bundle, that every file
exists and that its sha256 matches. Torch-free.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from edgekit.core.errors import (
    BundleError,
    ChecksumError,
    FormatVersionError,
    MissingFileError,
    UnsafePathError,
    UsageError,
)
from edgekit.core.specs import TensorSpec, specs_from_list, specs_to_list
from edgekit.core.version import __version__

FORMAT = "edgekit.core.bundle"
FORMAT_VERSION = 1
SUFFIX = ".edgekit"
STATUSES = ("ok", "not-validated", "failed", "pending-build")
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


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tree_digest(path: Path) -> tuple[str, int]:
    """sha256 and size of a file, or of a directory artifact (sorted relative paths + contents)."""
    if path.is_file():
        return sha256_of(path), path.stat().st_size
    h, size = hashlib.sha256(), 0
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        rel = p.relative_to(path).as_posix()
        h.update(rel.encode() + b"\0" + sha256_of(p).encode() + b"\n")
        size += p.stat().st_size
    return h.hexdigest(), size


@dataclass
class Validation:
    passed: bool | None
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    tolerance: float | None = None
    where: str = ""
    cases: int = 0
    detail: dict = field(default_factory=dict)


@dataclass
class Artifact:
    target: str
    graph: str
    precision: str
    path: str
    sha256: str = ""
    bytes: int = 0
    toolchain: dict = field(default_factory=dict)
    validation: Validation | None = None
    status: str = "ok"
    status_reason: str | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["validation"] = asdict(self.validation) if self.validation else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Artifact":
        d = dict(d)
        v = d.get("validation")
        d["validation"] = Validation(**v) if v else None
        return cls(**d)


@dataclass
class Graph:
    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"inputs": specs_to_list(self.inputs), "outputs": specs_to_list(self.outputs),
                "metadata": self.metadata}

    @classmethod
    def from_dict(cls, name: str, d: dict) -> "Graph":
        return cls(name, specs_from_list(d["inputs"]), specs_from_list(d["outputs"]), d.get("metadata", {}))


@dataclass
class Manifest:
    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    graphs: dict[str, Graph]
    artifacts: list[Artifact] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    pipeline: dict | None = None
    files: dict[str, dict] = field(default_factory=dict)
    producer: dict = field(default_factory=dict)
    created: str = ""

    def to_dict(self) -> dict:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "name": self.name,
            "producer": self.producer, "created": self.created,
            "inputs": specs_to_list(self.inputs), "outputs": specs_to_list(self.outputs),
            "metadata": self.metadata, "pipeline": self.pipeline,
            "graphs": {k: g.to_dict() for k, g in self.graphs.items()},
            "files": self.files, "artifacts": [a.to_dict() for a in self.artifacts],
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = "manifest.json") -> "Manifest":
        if d.get("format") != FORMAT:
            raise FormatVersionError(f"{where} is not an edgekit bundle manifest (format={d.get('format')!r})",
                                     "point at a directory written by `edgekit export`")
        if d.get("format_version") != FORMAT_VERSION:
            raise FormatVersionError(
                f"{where} has format_version {d.get('format_version')!r}; this edgekit reads {FORMAT_VERSION}",
                "re-export the model with this edgekit version, or upgrade edgekit")
        try:
            return cls(
                name=d["name"], inputs=specs_from_list(d["inputs"]), outputs=specs_from_list(d["outputs"]),
                graphs={k: Graph.from_dict(k, g) for k, g in d["graphs"].items()},
                artifacts=[Artifact.from_dict(a) for a in d.get("artifacts", [])],
                metadata=d.get("metadata") or {}, pipeline=d.get("pipeline"), files=d.get("files") or {},
                producer=d.get("producer") or {}, created=d.get("created", ""))
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{where} is malformed: {type(e).__name__}: {e}",
                              "re-export the bundle; manifests are written by edgekit") from None


def safe_join(root: Path, rel: str) -> Path:
    """``root / rel``, refusing absolute paths and anything that resolves outside ``root``."""
    if not isinstance(rel, str) or not rel or os.path.isabs(rel) or rel.startswith(("/", "\\")):
        raise UnsafePathError(f"manifest path {rel!r} is not a relative path inside the bundle",
                              "the bundle is corrupt or tampered with; re-export it")
    root_r = root.resolve()
    p = (root / rel).resolve()
    if p != root_r and root_r not in p.parents:
        raise UnsafePathError(f"manifest path {rel!r} leaves the bundle directory",
                              "the bundle is corrupt or tampered with; re-export it")
    return p


class Bundle:
    """A loaded bundle. ``Bundle.load(path)`` verifies it; ``bundle.path(artifact)`` resolves files."""

    def __init__(self, root: Path, manifest: Manifest):
        self.root = Path(root)
        self.manifest = manifest

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> "Bundle":
        root = Path(path)
        if root.is_file() and root.name == "manifest.json":
            root = root.parent
        if not root.exists():
            raise MissingFileError(f"bundle {str(root)!r} does not exist",
                                   "check the path; `edgekit export` prints where it wrote the bundle")
        mpath = root / "manifest.json"
        if not mpath.is_file():
            raise MissingFileError(f"{str(root)!r} has no manifest.json, so it is not an edgekit bundle",
                                   "point at the NAME.edgekit directory written by `edgekit export`")
        try:
            raw = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleError(f"{mpath} is not valid JSON ({e})", "re-export the bundle") from None
        if not isinstance(raw, dict):
            raise BundleError(f"{mpath} holds a JSON {type(raw).__name__}, not a bundle manifest (an object)",
                              "re-export the bundle; manifests are written by edgekit")
        bundle = cls(root, Manifest.from_dict(raw, str(mpath)))
        if verify:
            bundle.verify()
        return bundle

    def _entries(self) -> Iterable[tuple[str, str, int]]:
        for a in self.manifest.artifacts:
            if a.sha256:  # artifacts that failed before producing a file have none
                yield a.path, a.sha256, a.bytes
        for rel, info in self.manifest.files.items():
            yield rel, info["sha256"], info.get("bytes", -1)

    def verify(self) -> None:
        for rel, digest, _ in self._entries():
            p = safe_join(self.root, rel)
            if not p.exists():
                raise MissingFileError(f"bundle file {rel!r} named in the manifest is missing from {self.root}",
                                       "the bundle was copied incompletely; copy the whole directory or re-export")
            actual, _size = _tree_digest(p)
            if actual != digest:
                raise ChecksumError(f"bundle file {rel!r} is corrupt (sha256 {actual[:12]}… != manifest {digest[:12]}…)",
                                    "copy the bundle again or re-export it")

    def path(self, artifact: Artifact) -> Path:
        return safe_join(self.root, artifact.path)

    def file(self, rel: str) -> Path:
        if rel not in self.manifest.files:
            raise MissingFileError(f"bundle {self.root.name} carries no file {rel!r}",
                                   f"files in this bundle: {sorted(self.manifest.files) or 'none'}")
        return safe_join(self.root, rel)

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


class BundleWriter:
    """Stage a bundle in a hidden temp directory beside ``out/NAME.edgekit`` and rename it into place.

    Use as a context manager; if the block raises, the staging directory is removed and any
    previous bundle at the destination is left untouched.
    """

    def __init__(self, out_dir: str | os.PathLike, name: str):
        self.out_dir = Path(out_dir)
        self.name = check_name(name)
        self.dest = self.out_dir / (name if name.endswith(SUFFIX) else name + SUFFIX)
        self.stage: Path | None = None

    def __enter__(self) -> "BundleWriter":
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise UsageError(f"output directory {str(self.out_dir)!r} cannot be made: a file is in the way",
                             "choose another --out directory (or move the file)") from None
        except OSError as e:
            raise UsageError(f"output directory {str(self.out_dir)!r} cannot be made ({e.strerror})",
                             "choose a writable --out directory") from None
        self.stage = make_work_dir(f".{self.dest.name}.", self.out_dir, ".tmp")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.stage is not None:
            if self.stage.exists():
                shutil.rmtree(self.stage, ignore_errors=True)
            WORK_DIRS.discard(self.stage)

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
        artifact.sha256, artifact.bytes = _tree_digest(safe_join(self.stage, artifact.path))
        return artifact

    def add_file(self, manifest: Manifest, rel: str, src: str | os.PathLike | bytes) -> None:
        p = self.add(rel, src)
        digest, size = _tree_digest(p)
        manifest.files[rel] = {"sha256": digest, "bytes": size}

    def commit(self, manifest: Manifest) -> Path:
        assert self.stage is not None
        manifest.producer = {"edgekit": __version__, **manifest.producer}
        manifest.created = manifest.created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        (self.stage / "manifest.json").write_text(json.dumps(manifest.to_dict(), indent=2, default=_json_default))
        Bundle.load(self.stage)  # refuse to publish a bundle that would not load
        old = None
        if self.dest.exists():
            old = self.dest.with_name(f".{self.dest.name}.old-{os.getpid()}")
            os.replace(self.dest, old)
        os.chmod(self.stage, 0o755)  # mkdtemp made it private
        os.replace(self.stage, self.dest)
        WORK_DIRS.discard(self.stage)
        self.stage = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.dest


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
