"""The bundle manifest: its dataclasses, and reading an untrusted ``manifest.json`` into them.

Reading caps what the file may expand to (size, JSON nesting, container count, list lengths)
and checks the type of every field the runtime uses, naming the field in the error
("manifest.json: graphs.main.inputs[0].shape[1] must be an int or a name, got list"). Every
artifact that is not ``failed`` must carry a sha256; every path must be a plain relative path.
Torch-free.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.core import fsafe
from edgekit.core.errors import BundleError, ChecksumError, FormatVersionError, UnsafePathError
from edgekit.core.specs import TensorSpec, specs_to_list

FORMAT = "edgekit.core.bundle"
FORMAT_VERSION = 1
STATUSES = ("ok", "not-validated", "failed", "pending-build")
MANIFEST_MAX_BYTES = 16 << 20   # manifest.json size
MAX_DEPTH = 32                  # JSON nesting (objects and lists)
MAX_CONTAINERS = 1_000_000      # '{' + '[' in the file (an upper bound on the objects and lists parsed)
MAX_ITEMS = 4096                # artifacts, graphs, files, tensor specs of one graph
MAX_RANK = 64
MAX_DIM = 2**31 - 1
MAX_EXAMPLE_ELEMENTS = 1 << 28  # elements of one example shape (bench draws random inputs of it)
SHA256 = re.compile(r"[0-9a-f]{64}")
_SURROGATE = re.compile("[\ud800-\udfff]")
FIX = "re-export the bundle; manifests are written by edgekit"
_MISSING = object()


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
        return _wrap(lambda: _artifact(d, "artifact", None), "artifact")

    def describe(self) -> str:
        return f"{self.graph}/{self.target}/{self.precision} ({self.path})"


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
        return _wrap(lambda: _graph(name, d, f"graphs.{name}"), "graph")


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
    def from_dict(cls, d: Any, where: str = "manifest.json") -> "Manifest":
        """A checked Manifest from parsed JSON; any problem is a BundleError naming the field."""
        if not isinstance(d, dict):
            raise BundleError(f"{where} holds a JSON {_tname(d)}, not a bundle manifest (an object)", FIX)
        if d.get("format") != FORMAT:
            raise FormatVersionError(f"{where} is not an edgekit bundle manifest (format={d.get('format')!r:.80})",
                                     "point at a directory written by `edgekit export`")
        version = d.get("format_version")
        if type(version) is not int or version != FORMAT_VERSION:
            raise FormatVersionError(f"{where} has format_version {version!r:.40}; this edgekit reads {FORMAT_VERSION}",
                                     "re-export the model with this edgekit version, or upgrade edgekit")
        return _wrap(lambda: _manifest(cls, d), where)


class _FieldError(Exception):
    def __init__(self, field: str, message: str, cls: type[BundleError] = BundleError):
        super().__init__(message)
        self.field, self.message, self.cls = field, message, cls


def _wrap(fn, where: str):
    try:
        return fn()
    except _FieldError as e:
        raise e.cls(f"{where}: {e.field} {e.message}", FIX) from None


def _tname(v: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "bool", int: "int", float: "float"}
    return "null" if v is None else names.get(type(v), type(v).__name__)


def _bad(f: str, what: str, v: Any) -> _FieldError:
    if v is _MISSING:
        return _FieldError(f, "is missing")
    shown = f" {v!r:.60}" if isinstance(v, (str, int, float)) and not isinstance(v, bool) else ""
    return _FieldError(f, f"must be {what}, got {_tname(v)}{shown}")


def _k(key: str) -> str:
    """A key as it appears in a field path: itself when printable, else its repr (NUL, control characters)."""
    return key if key.isprintable() and len(key) <= 120 else repr(key[:120])


def _get(d: dict, key: str, f: str, default: Any = _MISSING) -> Any:
    v = d.get(key, default)
    if v is _MISSING:
        raise _bad(f"{f}.{key}" if f else key, "", _MISSING)
    return v


def _obj(v: Any, f: str, optional: bool = False) -> dict:
    if optional and v is None:
        return {}
    if not isinstance(v, dict):
        raise _bad(f, "an object", v)
    return v


def _list(v: Any, f: str, cap: int = MAX_ITEMS) -> list:
    if not isinstance(v, list):
        raise _bad(f, "a list", v)
    if len(v) > cap:
        raise _FieldError(f, f"has {len(v)} items, more than the {cap} a bundle may hold")
    return v


def _str(v: Any, f: str, empty: bool = True, optional: bool = False, cap: int = 4096) -> Any:
    if optional and v is None:
        return None
    if not isinstance(v, str) or (not empty and not v):
        raise _bad(f, "a string" if empty else "a non-empty string", v)
    if len(v) > cap:
        raise _FieldError(f, f"is {len(v)} characters long, more than {cap}")
    return v


def _int(v: Any, f: str, lo: int = 0, hi: int = 2**63 - 1) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise _bad(f, f"an int in [{lo}, {hi}]", v)
    return v


def _num(v: Any, f: str) -> float | None:
    if v is not None and (type(v) not in (int, float)):
        raise _bad(f, "a number or null", v)
    return v


def check_rel(rel: Any, f: str = "path") -> str:
    """A manifest path: relative, '/'-separated, no '..', '.' or empty parts, no NUL, backslash or drive."""
    if not isinstance(rel, str) or not rel or len(rel) > 1024:
        raise UnsafePathError(f"manifest path {rel!r:.80} ({f}) is not a relative path inside the bundle",
                              "the bundle is corrupt or tampered with; re-export it")
    parts = rel.split("/")
    if ".." in parts:
        raise UnsafePathError(f"manifest path {rel!r:.80} ({f}) leaves the bundle directory",
                              "the bundle is corrupt or tampered with; re-export it")
    if rel.startswith("/") or any(p in ("", ".") for p in parts) or "\\" in rel or "\0" in rel or rel[1:2] == ":":
        raise UnsafePathError(f"manifest path {rel!r:.80} ({f}) is not a plain relative path inside the bundle",
                              "the bundle is corrupt or tampered with; re-export it")
    return rel


def _spec(v: Any, f: str) -> TensorSpec:
    d = _obj(v, f)
    name = _str(_get(d, "name", f), f"{f}.name", empty=False, cap=1024)
    dtype = _str(_get(d, "dtype", f), f"{f}.dtype", cap=64)
    try:
        dt = np.dtype(dtype)
    except Exception:  # noqa: BLE001 - numpy raises TypeError, ValueError, SyntaxError for odd strings
        dt = None
    if dt is None or dt.kind not in "biufc" or dt.fields is not None or dt.subdtype is not None:
        raise _FieldError(f"{f}.dtype", f"must be a numeric dtype name (float32, int64, ...), got {dtype!r:.40}")
    dims = []
    for i, x in enumerate(_list(_get(d, "shape", f), f"{f}.shape", MAX_RANK)):
        if isinstance(x, str) and x and len(x) <= 256:
            dims.append(x)
        elif type(x) is int and 0 <= x <= MAX_DIM:
            dims.append(x)
        else:
            raise _bad(f"{f}.shape[{i}]", f"an int in [0, {MAX_DIM}] or a name", x)
    return TensorSpec(name, dt.name, tuple(dims))


def _specs(v: Any, f: str) -> list[TensorSpec]:
    return [_spec(x, f"{f}[{i}]") for i, x in enumerate(_list(v, f))]


def _example_shapes(v: Any, f: str) -> None:
    for name, shape in _obj(v, f, optional=True).items():
        n, g = 1, f"{f}.{_k(name)}"
        for i, x in enumerate(_list(shape, g, MAX_RANK)):
            n *= _int(x, f"{g}[{i}]", 0, MAX_DIM)
        if n > MAX_EXAMPLE_ELEMENTS:
            raise _FieldError(g, f"has {n} elements, more than {MAX_EXAMPLE_ELEMENTS}")


def _graph(name: str, v: Any, f: str) -> Graph:
    if not name or len(name) > 256 or any(c in name for c in "/\\\0") or name in (".", ".."):
        raise _FieldError(f, "is not a plain graph name (no '/', '\\', NUL; not '.' or '..')")
    d = _obj(v, f)
    meta = _obj(d.get("metadata"), f"{f}.metadata", optional=True)
    _example_shapes(meta.get("example_shapes"), f"{f}.metadata.example_shapes")
    return Graph(name, _specs(_get(d, "inputs", f), f"{f}.inputs"), _specs(_get(d, "outputs", f), f"{f}.outputs"),
                 meta)


def _validation(v: Any, f: str) -> Validation | None:
    d = _obj(v, f, optional=True)
    if not d:
        return None
    passed = d.get("passed")
    if passed is not None and type(passed) is not bool:
        raise _bad(f"{f}.passed", "true, false or null", passed)
    return Validation(passed=passed, max_abs_err=_num(d.get("max_abs_err"), f"{f}.max_abs_err"),
                      max_rel_err=_num(d.get("max_rel_err"), f"{f}.max_rel_err"),
                      tolerance=_num(d.get("tolerance"), f"{f}.tolerance"),
                      where=_str(d.get("where", ""), f"{f}.where"), cases=_int(d.get("cases", 0), f"{f}.cases"),
                      detail=_obj(d.get("detail"), f"{f}.detail", optional=True))


def _artifact(v: Any, f: str, graphs: dict | None) -> Artifact:
    d = _obj(v, f)
    graph = _str(_get(d, "graph", f), f"{f}.graph", empty=False, cap=256)
    if graphs is not None and graph not in graphs:
        raise _FieldError(f"{f}.graph", f"names graph {graph!r:.60}, which the manifest does not declare")
    status = d.get("status", "ok")
    if status not in STATUSES:
        raise _bad(f"{f}.status", f"one of {', '.join(STATUSES)}", status)
    sha = _str(d.get("sha256", ""), f"{f}.sha256", cap=64)
    if sha and not SHA256.fullmatch(sha):
        raise _FieldError(f"{f}.sha256", "must be 64 lowercase hex digits", ChecksumError)
    if not sha and status != "failed":
        raise _FieldError(f, f"has status {status!r} but no sha256 checksum, so it cannot be verified",
                          ChecksumError)
    extra = _obj(d.get("extra"), f"{f}.extra", optional=True)
    _example_shapes(extra.get("example_shapes"), f"{f}.extra.example_shapes")
    return Artifact(target=_str(_get(d, "target", f), f"{f}.target", empty=False, cap=64), graph=graph,
                    precision=_str(_get(d, "precision", f), f"{f}.precision", empty=False, cap=64),
                    path=check_rel(_get(d, "path", f), f"{f}.path"), sha256=sha,
                    bytes=_int(d.get("bytes", 0), f"{f}.bytes"),
                    toolchain=_obj(d.get("toolchain"), f"{f}.toolchain", optional=True),
                    validation=_validation(d.get("validation"), f"{f}.validation"), status=status,
                    status_reason=_str(d.get("status_reason"), f"{f}.status_reason", optional=True, cap=1 << 16),
                    extra=extra)


def _files(v: Any) -> dict[str, dict]:
    files = _obj(v, "files", optional=True)
    if len(files) > MAX_ITEMS:
        raise _FieldError("files", f"lists {len(files)} files, more than the {MAX_ITEMS} a bundle may hold")
    for rel, info in files.items():
        f = f"files.{_k(rel)}"
        check_rel(rel, f)
        info = _obj(info, f)
        if not SHA256.fullmatch(_str(_get(info, "sha256", f), f"{f}.sha256", cap=64)):
            raise _FieldError(f"{f}.sha256", "must be 64 lowercase hex digits", ChecksumError)
        _int(info.get("bytes", 0), f"{f}.bytes")
    return files


def _metadata(v: Any) -> dict:
    meta = _obj(v, "metadata", optional=True)
    if "labels" in meta:
        _list(meta["labels"], "metadata.labels", 1 << 20)
    for key, check in (("task", _str), ("source", _str), ("text", _obj), ("preprocessing", _obj)):
        if key in meta:
            check(meta[key], f"metadata.{key}")
    text = meta.get("text") or {}
    if "tokenizer" in text:
        check_rel(text["tokenizer"], "metadata.text.tokenizer")
    for key in ("max_len", "pad_id"):
        if key in text:
            _int(text[key], f"metadata.text.{key}", 0, MAX_DIM)
    return meta


def _pipeline(v: Any) -> dict | None:
    if v is None:
        return None
    p = _obj(v, "pipeline")
    _str(_get(p, "kind", "pipeline"), "pipeline.kind", empty=False, cap=64)
    _obj(p.get("params"), "pipeline.params", optional=True)
    return p


def _manifest(cls: type[Manifest], d: dict) -> Manifest:
    graphs_raw = _obj(_get(d, "graphs", ""), "graphs")
    if len(graphs_raw) > MAX_ITEMS:
        raise _FieldError("graphs", f"declares {len(graphs_raw)} graphs, more than {MAX_ITEMS}")
    graphs = {k: _graph(k, g, f"graphs.{_k(k)}") for k, g in graphs_raw.items()}
    arts = [_artifact(a, f"artifacts[{i}]", graphs) for i, a in enumerate(_list(d.get("artifacts", []), "artifacts"))]
    return cls(name=_str(_get(d, "name", ""), "name", empty=False, cap=256),
               inputs=_specs(_get(d, "inputs", ""), "inputs"), outputs=_specs(_get(d, "outputs", ""), "outputs"),
               graphs=graphs, artifacts=arts, metadata=_metadata(d.get("metadata")),
               pipeline=_pipeline(d.get("pipeline")), files=_files(d.get("files")),
               producer=_obj(d.get("producer"), "producer", optional=True),
               created=_str(d.get("created") or "", "created", cap=64))


def _check_tree(obj: Any, where: str, strings: bool) -> None:
    """Nesting depth; with ``strings``, also that every key and string is valid Unicode (JSON's \\u
    escapes can spell lone surrogates, which no file name or terminal can take)."""
    bad_text = BundleError(f"{where} holds text that is not valid Unicode (a lone surrogate escape)", FIX)
    stack = [(obj, 1)]
    while stack:
        o, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BundleError(f"{where} nests objects/lists deeper than {MAX_DEPTH} levels", FIX)
        if strings and isinstance(o, dict) and any(_SURROGATE.search(k) for k in o):
            raise bad_text
        for v in (o.values() if isinstance(o, dict) else o):
            if isinstance(v, (dict, list)):
                stack.append((v, depth + 1))
            elif strings and isinstance(v, str) and _SURROGATE.search(v):
                raise bad_text


def read_manifest(root: Path) -> Manifest:
    """Read ``root/manifest.json`` (a regular file, at most MANIFEST_MAX_BYTES) into a checked Manifest."""
    mpath = root / "manifest.json"
    data = fsafe.read_capped(mpath, "manifest.json", MANIFEST_MAX_BYTES)
    where = str(mpath)
    if data.count(b"{") + data.count(b"[") > MAX_CONTAINERS:
        raise BundleError(f"{where} holds more than {MAX_CONTAINERS} objects/lists", FIX)
    try:
        raw = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise BundleError(f"{where} is not valid JSON (not UTF-8 text: {e.reason} at byte {e.start})", FIX) from None
    except RecursionError:
        raise BundleError(f"{where} nests objects/lists deeper than {MAX_DEPTH} levels", FIX) from None
    except ValueError as e:  # JSONDecodeError, and integers too long to convert
        raise BundleError(f"{where} is not valid JSON ({str(e)[:200]})", "re-export the bundle") from None
    if isinstance(raw, (dict, list)):
        _check_tree(raw, where, strings=re.search(rb"\\u[dD][89a-fA-F]", data) is not None)
    return Manifest.from_dict(raw, where)
