""".npz/.npy files (the user's inputs and a bundle's validation file): capped before anything is allocated,
no object arrays, no pickle, one clear error for every malformed file."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from edgekit.core.bundle import Bundle
from edgekit.core.errors import BundleError, DataError
from edgekit.core.inputs import VALIDATION_MAX_BYTES, load_arrays, load_validation, read_arrays
from edgekit.core.specs import TensorSpec
from tests.conftest import assert_user_error, run_cli
from tests.fixtures.bundles import edit_manifest, rehash

X = [TensorSpec("x", "float32", ("batch", 4))]


def _npy_header(shape, dtype="<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def test_plain_files_still_read(tmp_path):
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.savez(tmp_path / "a.npz", x=a)
    np.savez_compressed(tmp_path / "c.npz", a)
    np.save(tmp_path / "a.npy", np.asfortranarray(a))
    for name in ("a.npz", "c.npz", "a.npy"):
        np.testing.assert_array_equal(load_arrays(tmp_path / name, X)["x"], a)
    np.save(tmp_path / "s.npy", np.float32(3))
    assert read_arrays(tmp_path / "s.npy", "s.npy").shape == ()


def test_object_arrays_are_refused(tmp_path):
    np.savez(tmp_path / "o.npz", x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError, match="object array .*never unpickles"):
        load_arrays(tmp_path / "o.npz", X)


def test_a_small_file_cannot_expand_to_gigabytes(tmp_path):
    # a 4 GB float32 array declared in the header, a few bytes of data: refused before allocation
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w") as z:
        z.writestr("x.npy", _npy_header((1 << 30,)) + b"\0" * 16)
    with pytest.raises(DataError, match=r"declares a float32 array of shape \[1073741824\]"):
        load_arrays(tmp_path / "bomb.npz", X)
    (tmp_path / "bomb.npy").write_bytes(_npy_header((1 << 30,)) + b"\0" * 16)
    with pytest.raises(DataError, match="declares a float32 array"):
        load_arrays(tmp_path / "bomb.npy", X)
    # 80 MB of zeros deflate to ~80 KB: the zip directory's sizes are checked against the cap first
    with zipfile.ZipFile(tmp_path / "deflate.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", _npy_header((20 << 20,)) + bytes(80 << 20))
    assert (tmp_path / "deflate.npz").stat().st_size < 1 << 20
    with pytest.raises(BundleError, match="expands to 80.0 MiB, more than the 64 MiB allowed"):
        read_arrays(tmp_path / "deflate.npz", "deflate.npz", cap=VALIDATION_MAX_BYTES, bundle_file=True)


@pytest.mark.parametrize("content,words", [
    (b"hello, not an array", "neither an .npz nor an .npy"),
    (b"PK\x03\x04 broken zip", "not a valid .npz"),
    (b"\x93NUMPY\x09\x00 bad version", "not a readable .npy"),
])
def test_malformed_files(tmp_path, content, words):
    (tmp_path / "bad.npz").write_bytes(content)
    with pytest.raises(DataError, match=words):
        load_arrays(tmp_path / "bad.npz", X)


def test_zip_members_that_are_not_arrays_or_are_truncated(tmp_path):
    with zipfile.ZipFile(tmp_path / "m.npz", "w") as z:
        z.writestr("notes.txt", b"hi")
    with pytest.raises(DataError, match="'notes.txt', which is not an .npy array"):
        load_arrays(tmp_path / "m.npz", X)
    with zipfile.ZipFile(tmp_path / "t.npz", "w") as z:
        z.writestr("x.npy", _npy_header((2, 4)) + b"\0" * 8)
    with pytest.raises(DataError, match="holds 0.0 MiB|truncated"):
        load_arrays(tmp_path / "t.npz", X)


def test_cli_user_input_errors_are_one_line(digits_bundle, tmp_path):
    np.savez(tmp_path / "o.npz", x=np.array([object()], dtype=object))
    assert_user_error(run_cli("run", digits_bundle, "--input", tmp_path / "o.npz"), "object array")


def _validation_file(bundle, data: bytes | None = None, arrays: dict | None = None):
    p = bundle / "validation" / "main.npz"
    if arrays is not None:
        np.savez(p, **arrays)
    else:
        p.write_bytes(data)
    rehash(bundle, "validation/main.npz")  # a tamperer who fixes the checksum too


@pytest.mark.parametrize("kind,words", [
    ("garbage", "not a valid .npz"),
    ("no-refs", "holds no reference outputs"),
    ("object", "object array"),
    ("unlisted", "lists no validation/main.npz"),
])
def test_bad_validation_files_fail_validate(bundle_copy, kind, words):
    if kind == "garbage":
        _validation_file(bundle_copy, b"PK\x03\x04" + b"\0" * 64)
    elif kind == "no-refs":
        _validation_file(bundle_copy, arrays={"in.x": np.zeros((1, 1, 8, 8), np.float32)})
    elif kind == "object":
        _validation_file(bundle_copy, arrays={"in.x": np.zeros(1), "out.logits": np.array([None], dtype=object)})
    else:
        edit_manifest(bundle_copy, lambda m: m["files"].pop("validation/main.npz"))
    b = Bundle.load(bundle_copy, verify="used")
    with pytest.raises(BundleError, match=words):
        load_validation(b, "main")
    if kind in ("no-refs", "unlisted"):
        r = run_cli("validate", bundle_copy)
        assert r.returncode == 1 and "no reference outputs" in r.stdout and words in r.stdout, r.stdout
        assert "internal error" not in r.stderr
