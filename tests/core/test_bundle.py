"""Bundle format: atomic writes, checksums, path safety, format versions."""
from __future__ import annotations

import json

import pytest

from edgekit.core.bundle import Bundle, BundleWriter, Manifest
from edgekit.core.errors import BundleError, ChecksumError, FormatVersionError, MissingFileError, UnsafePathError
from edgekit.core.specs import TensorSpec
from tests.conftest import run_cli


def _manifest(b):
    return json.loads((b / "manifest.json").read_text())


def _write_manifest(b, m):
    (b / "manifest.json").write_text(json.dumps(m))


def test_manifest_records_the_contract(digits_bundle):
    m = _manifest(digits_bundle)
    assert m["format"] == "edgekit.core.bundle" and m["format_version"] == 1
    assert m["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 1, 8, 8]}]
    assert m["outputs"][0]["shape"] == ["batch", 10]
    assert m["metadata"]["labels"] == [str(i) for i in range(10)]
    assert m["metadata"]["preprocessing"]["std"] == [0.4]
    a = m["artifacts"][0]
    assert a["target"] == "onnx" and a["graph"] == "main" and a["status"] == "ok"
    assert len(a["sha256"]) == 64 and a["bytes"] > 0 and a["toolchain"]["opset"] >= 17
    v = a["validation"]
    assert v["passed"] and v["max_abs_err"] <= 1e-4 and v["cases"] >= 3 and v["tolerance"] > 0
    assert "main" in m["graphs"] and "validation/main.npz" in m["files"]


def test_loads_and_verifies(digits_bundle):
    b = Bundle.load(digits_bundle)
    assert b.find("onnx").precision == "fp32"
    assert b.graph("main").inputs[0] == TensorSpec("x", "float32", ("batch", 1, 8, 8))


def test_flipped_byte_is_a_checksum_error(bundle_copy):
    p = bundle_copy / "main.onnx"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="main.onnx.*corrupt"):
        Bundle.load(bundle_copy)
    r = run_cli("info", bundle_copy)  # info lists the damage (integrity column) and warns on one line
    assert r.returncode == 0 and "corrupt" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "damaged" in r.stdout
    r = run_cli("validate", bundle_copy)
    assert r.returncode == 1 and "damaged" in r.stderr and "Traceback" not in r.stderr


def test_missing_file(bundle_copy):
    (bundle_copy / "main.onnx").unlink()
    with pytest.raises(MissingFileError, match="missing"):
        Bundle.load(bundle_copy)
    r = run_cli("run", bundle_copy, "--input", "nothing.npz")
    assert r.returncode != 0 and "missing" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("bad", ["../outside.onnx", "/etc/passwd", "sub/../../x.onnx"])
def test_paths_leaving_the_bundle_are_rejected(bundle_copy, bad):
    m = _manifest(bundle_copy)
    m["artifacts"][0]["path"] = bad
    _write_manifest(bundle_copy, m)
    with pytest.raises(UnsafePathError):
        Bundle.load(bundle_copy)
    r = run_cli("validate", bundle_copy)
    assert r.returncode != 0 and "bundle" in r.stderr and "Traceback" not in r.stderr


def test_unknown_format_version(bundle_copy):
    m = _manifest(bundle_copy)
    m["format_version"] = 99
    _write_manifest(bundle_copy, m)
    with pytest.raises(FormatVersionError, match="format_version 99"):
        Bundle.load(bundle_copy)


def test_not_a_bundle(tmp_path):
    with pytest.raises(MissingFileError):
        Bundle.load(tmp_path / "nope.edgekit")
    (tmp_path / "empty.edgekit").mkdir()
    with pytest.raises(MissingFileError, match="manifest.json"):
        Bundle.load(tmp_path / "empty.edgekit")
    (tmp_path / "empty.edgekit" / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.load(tmp_path / "empty.edgekit")


def test_writer_is_atomic(tmp_path):
    spec = [TensorSpec("x", "float32", (1,))]
    m = Manifest("m", spec, spec, {})
    with BundleWriter(tmp_path, "m") as w:
        w.add_file(m, "a.bin", b"first")
        dest = w.commit(m)
    assert Bundle.load(dest).file("a.bin").read_bytes() == b"first"
    with pytest.raises(RuntimeError):
        with BundleWriter(tmp_path, "m") as w:
            w.add_file(m, "a.bin", b"second")
            raise RuntimeError("export crashed half way")
    assert Bundle.load(dest).file("a.bin").read_bytes() == b"first"  # old bundle untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.edgekit"]  # no staging debris
