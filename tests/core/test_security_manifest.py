"""An untrusted manifest: wrong types, missing keys, deep nesting, huge files give one BundleError naming
the field or the cause (never another exception); a property-based fuzz of the loader."""
from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekit.core import manifest as mf
from edgekit.core.bundle import Bundle
from edgekit.core.errors import BundleError, ChecksumError, FormatVersionError, UnsafePathError
from tests.conftest import assert_user_error, run_cli
from tests.fixtures.bundles import copy as copy_bundle


def _set(path: tuple, value):
    """A mutation: set ``path`` (keys and list indexes) of the manifest to ``value`` (_DELETE deletes it)."""
    def fn(m):
        *parents, last = path
        node = m
        for p in parents:
            node = node[p]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value
    return fn


_DELETE = object()
FILE = "validation/main.npz"
CASES = [
    (("graphs",), [], "graphs must be an object, got list"),
    (("graphs", "main"), "x", "graphs.main must be an object, got string"),
    (("graphs", "main", "inputs", 0, "shape", 1), [1],
     "graphs.main.inputs[0].shape[1] must be an int in [0, 2147483647] or a name, got list"),
    (("graphs", "main", "inputs"), _DELETE, "graphs.main.inputs is missing"),
    (("graphs", "main", "inputs", 0, "dtype"), "object", "graphs.main.inputs[0].dtype must be a numeric dtype name"),
    (("files",), [], "files must be an object, got list"),
    (("files", FILE), "abc", f"files.{FILE} must be an object, got string"),
    (("files", FILE, "sha256"), 12, f"files.{FILE}.sha256 must be a string, got int"),
    (("pipeline",), "tokens", "pipeline must be an object, got string"),
    (("pipeline",), {"params": {}}, "pipeline.kind is missing"),
    (("artifacts",), {}, "artifacts must be a list, got object"),
    (("artifacts", 0), 7, "artifacts[0] must be an object, got int"),
    (("artifacts", 0, "status"), "great",
     "artifacts[0].status must be one of ok, not-validated, failed, pending-build"),
    (("artifacts", 0, "graph"), "nope", "artifacts[0].graph names graph 'nope', which the manifest does not declare"),
    (("artifacts", 0, "bytes"), -1, "artifacts[0].bytes must be an int"),
    (("artifacts", 0, "validation"), [], "artifacts[0].validation must be an object, got list"),
    (("artifacts", 0, "validation", "passed"), "yes", "artifacts[0].validation.passed must be true, false or null"),
    (("metadata", "labels"), 5, "metadata.labels must be a list, got int"),
    (("metadata",), [], "metadata must be an object, got list"),
    (("inputs", 0, "shape"), "batch", "inputs[0].shape must be a list, got string"),
    (("name",), 5, "name must be a non-empty string, got int"),
    (("graphs", "main", "metadata", "example_shapes", "x"), [2**31, 2**31], "example_shapes.x[0] must be an int"),
]


@pytest.fixture()
def bundle(bundle_copy):
    return bundle_copy


def _write(b, m):
    (b / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("path,value,message", CASES, ids=["/".join(map(str, c[0])) for c in CASES])
def test_malformed_fields_are_named(bundle, path, value, message):
    m = json.loads((bundle / "manifest.json").read_text())
    _set(path, value)(m)
    _write(bundle, m)
    with pytest.raises(BundleError) as info:
        Bundle.load(bundle)
    assert message in str(info.value), str(info.value)
    assert len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize("case", [0, 9])
def test_malformed_fields_through_the_cli(bundle, case):
    path, value, message = CASES[case]
    m = json.loads((bundle / "manifest.json").read_text())
    _set(path, value)(m)
    _write(bundle, m)
    assert_user_error(run_cli("info", bundle), message)


def test_checksum_and_version_fields(bundle):
    m = json.loads((bundle / "manifest.json").read_text())
    for bad, exc in (({"format_version": True}, FormatVersionError), ({"format_version": "1"}, FormatVersionError)):
        _write(bundle, {**m, **bad})
        with pytest.raises(exc):
            Bundle.load(bundle)
    m2 = copy.deepcopy(m)
    m2["artifacts"][0]["sha256"] = "ABC"
    _write(bundle, m2)
    with pytest.raises(ChecksumError, match="64 lowercase hex"):
        Bundle.load(bundle)
    m3 = copy.deepcopy(m)
    m3["artifacts"][0]["path"] = "main\ud800.onnx"  # a lone surrogate: no file name, no terminal takes it
    m3["metadata"]["labels"][0] = "\udfff"
    _write(bundle, m3)
    with pytest.raises(BundleError, match="not valid Unicode"):
        Bundle.load(bundle)
    for bad in ("../x.onnx", "/abs", "a//b", "./a", "a\\b", "C:x", "a\0b"):
        m2["artifacts"][0].update(sha256="0" * 64, path=bad)
        _write(bundle, m2)
        with pytest.raises(UnsafePathError):
            Bundle.load(bundle)


@pytest.mark.parametrize("depth", [mf.MAX_DEPTH + 1, 5000, 200_000])
def test_deep_nesting_is_refused(bundle, depth):
    m = json.loads((bundle / "manifest.json").read_text())
    text = json.dumps(m).replace('"metadata": {', '"metadata": {"deep": ' + "[" * depth + "]" * depth + ", ", 1)
    (bundle / "manifest.json").write_text(text)
    with pytest.raises(BundleError, match="nests objects/lists deeper than 32|holds more than"):
        Bundle.load(bundle)


def test_size_and_count_caps(bundle):
    m = json.loads((bundle / "manifest.json").read_text())
    with open(bundle / "manifest.json", "w") as f:  # a sparse 17 MB file: refused before it is read
        f.write(json.dumps(m))
        f.truncate(mf.MANIFEST_MAX_BYTES + 1)
    with pytest.raises(BundleError, match="more than the 16 MiB"):
        Bundle.load(bundle)
    text = json.dumps(m).replace('"metadata": {', '"metadata": {"many": [' + "[]," * mf.MAX_CONTAINERS + "[]], ", 1)
    (bundle / "manifest.json").write_text(text)
    with pytest.raises(BundleError, match="holds more than 1000000 objects/lists"):
        Bundle.load(bundle)
    (bundle / "manifest.json").write_bytes(b'{"format": "\xff"}')
    with pytest.raises(BundleError, match="not UTF-8"):
        Bundle.load(bundle)
    head = '{"format": "edgekit.core.bundle", "format_version": 1, "x": '
    (bundle / "manifest.json").write_text(head + "9" * 5000 + "}")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.load(bundle)


# ----------------------------------------------------------------------------- property-based fuzz
NASTY = st.sampled_from(["", ".", "..", "../x", "/etc/passwd", "a\0b", "C:\\x", "main.onnx", FILE, "x" * 5000,
                         "float32", "object", "main", "ok", "failed", "batch", "é/ü", "\ud800"])
LEAF = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12) | NASTY


def _containers(children):
    return st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6) | NASTY, children, max_size=4)


JSON = st.recursive(LEAF, _containers, max_leaves=12)


def _slots(node, out, depth=1):
    """Every (container, key, depth) in a JSON tree."""
    items = enumerate(node) if isinstance(node, list) else node.items() if isinstance(node, dict) else ()
    for k, v in items:
        out.append((node, k, depth))
        _slots(v, out, depth + 1)
    return out


@st.composite
def mutated(draw, base):
    """The valid manifest with 1-4 mutations (replace by any JSON, delete, wrap), most near the top."""
    m = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        limit = draw(st.sampled_from([1, 2, 3, 4, 5, 99]))
        slots = [s for s in _slots(m, []) if s[2] <= limit] or _slots(m, [])
        if not slots:
            break
        node, key, _depth = slots[draw(st.integers(0, len(slots) - 1))]
        action = draw(st.sampled_from(["replace", "replace", "delete", "wrap"]))
        if action == "delete" and isinstance(node, dict):
            del node[key]
        elif action == "wrap":
            node[key] = [node[key]] if draw(st.booleans()) else {"v": node[key]}
        else:
            node[key] = draw(JSON)
    return m


@pytest.fixture(scope="module")
def fuzz_bundle(digits_bundle, tmp_path_factory):
    b = copy_bundle(digits_bundle, tmp_path_factory.mktemp("fuzz"))
    return b, json.loads((b / "manifest.json").read_text())


def test_fuzzed_manifests_raise_only_bundle_errors(fuzz_bundle):
    b, base = fuzz_bundle

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(mutated(base))
    def check(m):
        try:
            text = json.dumps(m, allow_nan=True)
        except (ValueError, UnicodeEncodeError):
            return
        (b / "manifest.json").write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            loaded = Bundle.load(b)
        except BundleError as e:
            assert str(e) and len(str(e).splitlines()) == 1
            return
        json.dumps(loaded.manifest.to_dict(), ensure_ascii=False).encode("utf-8")  # printable as UTF-8
        for a in loaded.manifest.artifacts:
            assert a.status in mf.STATUSES and isinstance(a.bytes, int) and (a.sha256 or a.status == "failed")
        loaded.integrity()

    check()
