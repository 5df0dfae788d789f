"""A bundle is untrusted: only regular files and directories inside it, every used file checksummed,
nothing blocks, and one damaged artifact does not block the intact ones."""
from __future__ import annotations

import os
import socket
import time

import numpy as np
import pytest
from edgekit.exporters.recheck import recheck_bundle

import edgekit
from edgekit.core.bundle import Bundle
from edgekit.core.errors import BundleError, ChecksumError, DataError, UnsafeFileError
from edgekit.core.inputs import load_arrays
from edgekit.models.digits import heldout
from tests.conftest import assert_user_error, run_cli
from tests.fixtures.bundles import copy, edit_manifest, rehash


@pytest.fixture()
def mixed(mixed_bundle, tmp_path):
    return copy(mixed_bundle, tmp_path)


def _flip(p):
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))


def _link_to_outside_copy(p, tmp_path):
    """Replace ``p`` by a symlink to an identical file outside the bundle (the checksum would match)."""
    outside = tmp_path / f"outside-{p.name}"
    outside.write_bytes(p.read_bytes())
    p.unlink()
    p.symlink_to(outside)


@pytest.mark.parametrize("where", ["main.openvino/model.bin", "main.onnx", "validation/main.npz"])
def test_symlinks_are_refused_even_with_matching_content(mixed, tmp_path, where):
    _link_to_outside_copy(mixed / where, tmp_path)
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        Bundle.load(mixed)
    res = recheck_bundle(Bundle.load(mixed, verify="used"))
    assert res["failed"] and "symbolic link" in repr(res)
    if where == "main.onnx":  # the whole path once, through the CLI
        r = run_cli("validate", mixed)
        assert r.returncode == 1 and "symbolic link" in r.stdout and "internal error" not in r.stderr


def test_links_staying_inside_and_linked_directories_are_refused(mixed):
    (mixed / "main.onnx").rename(mixed / "real.onnx")
    (mixed / "main.onnx").symlink_to("real.onnx")
    with pytest.raises(UnsafeFileError, match="'main.onnx' is a symbolic link"):
        Bundle.load(mixed)
    (mixed / "main.onnx").unlink()
    (mixed / "real.onnx").rename(mixed / "main.onnx")
    (mixed / "validation").rename(mixed / "val")
    (mixed / "validation").symlink_to("val")
    with pytest.raises(UnsafeFileError, match="'validation' is a symbolic link"):
        Bundle.load(mixed)


def test_hard_links_are_regular_files_and_checked(mixed):
    os.link(mixed / "main.onnx", mixed / "copy.onnx")  # st_nlink 2: allowed, the content is what is checked
    Bundle.load(mixed)
    os.unlink(mixed / "main.onnx")
    os.link(mixed / "main.openvino" / "model.xml", mixed / "main.onnx")
    with pytest.raises(ChecksumError):
        Bundle.load(mixed)


@pytest.mark.parametrize("where", ["main.onnx", "validation/main.npz", "manifest.json",
                                   "main.openvino/model.bin"])
def test_fifos_never_block(mixed, where):
    (mixed / where).unlink()
    os.mkfifo(mixed / where)
    with pytest.raises(BundleError, match="FIFO"):
        Bundle.load(mixed)
    if where == "manifest.json":
        return
    b = Bundle.load(mixed, verify="used")
    assert "FIFO" in " ".join(filter(None, b.integrity().values()))
    res = recheck_bundle(b)
    assert res["failed"] and "FIFO" in repr(res)
    with pytest.raises(DataError, match="FIFO"):
        load_arrays(mixed / where, b.manifest.inputs)  # a FIFO given as the user's --input


def test_fifos_never_block_the_cli(mixed):
    os.unlink(mixed / "validation" / "main.npz")
    os.mkfifo(mixed / "validation" / "main.npz")
    t0 = time.monotonic()
    for cmd in (("validate", mixed), ("info", mixed), ("run", mixed, "--input", mixed / "validation" / "main.npz")):
        r = run_cli(*cmd, timeout=60)
        assert r.returncode == (0 if cmd[0] == "info" else 1), (cmd, r.stderr)  # info lists the damage
        assert "FIFO" in r.stdout + r.stderr and "internal error" not in r.stderr, (cmd, r.stderr)
    assert time.monotonic() - t0 < 60


def test_sockets_are_refused(mixed):
    (mixed / "main.onnx").unlink()
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(mixed / "main.onnx"))
        with pytest.raises(UnsafeFileError, match="socket"):
            Bundle.load(mixed)
    finally:
        s.close()


@pytest.mark.parametrize("status", ["ok", "not-validated"])
def test_blanked_checksum_is_refused(mixed, status):
    def blank(m):
        m["artifacts"][1]["sha256"] = ""
        m["artifacts"][1]["status"] = status
    edit_manifest(mixed, blank)
    with pytest.raises(ChecksumError, match=r"artifacts\[1\] has status .* but no sha256"):
        Bundle.load(mixed, verify=False)
    assert_user_error(run_cli("run", mixed, "--input", "x.npz", "-b", "onnxruntime"), "no sha256")


def test_failed_artifacts_may_lack_a_checksum(mixed):
    def fail(m):
        m["artifacts"][1].update(sha256="", status="failed", status_reason="exporter crashed")
    edit_manifest(mixed, fail)
    b = Bundle.load(mixed)
    with pytest.raises(BundleError, match="no checksum"):
        b.path(b.manifest.artifacts[1])


def test_one_damaged_artifact_does_not_block_the_others(mixed):
    _flip(mixed / "main.openvino" / "model.bin")
    x = heldout()[0][:2]
    assert edgekit.load(mixed, backend="onnxruntime").run({"x": x})["logits"].shape == (2, 10)
    with pytest.raises(ChecksumError, match="main.openvino"):
        edgekit.load(mixed, backend="openvino")  # a damaged artifact is never run
    with pytest.raises(ChecksumError):
        Bundle.load(mixed)  # verify=True still checks everything
    rows = {a["target"]: a for a in recheck_bundle(Bundle.load(mixed, verify="used"))["artifacts"]}
    assert rows["openvino"]["result"] == "damaged" and rows["onnx"]["result"] == "pass"
    np.savez(mixed.parent / "x.npz", x=x)
    r = run_cli("run", mixed, "--input", mixed.parent / "x.npz", "--backend", "onnxruntime")
    assert r.returncode == 0 and "top-1" in r.stdout, r.stderr
    r = run_cli("info", mixed)
    assert r.returncode == 0 and "warning" in r.stderr and "main.openvino" in r.stderr
    row = next(line for line in r.stdout.splitlines() if "openvino" in line)
    assert "damaged" in row and "corrupt" in row
    assert "│ ok " in next(line for line in r.stdout.splitlines() if "│ onnx " in line)


def test_load_hashes_only_what_is_used(mixed, monkeypatch):
    from edgekit.core import fsafe

    hashed = []
    real = fsafe.sha256_regular
    monkeypatch.setattr(fsafe, "sha256_regular", lambda p, label: hashed.append(label) or real(p, label))
    edgekit.load(mixed, backend="onnxruntime")
    assert hashed == ["main.onnx"]
    hashed.clear()
    Bundle.load(mixed)
    assert sorted(hashed) == ["main.onnx", "main.openvino/model.bin", "main.openvino/model.xml", "validation/main.npz"]


def test_a_rehashed_garbage_model_fails_validate_not_crashes(mixed):
    """A tamperer who also fixes the checksum: the file is 'intact' but not a model. validate must FAIL."""
    (mixed / "main.onnx").write_bytes(b"not an onnx model")
    rehash(mixed, "main.onnx")
    rows = {a["target"]: a for a in recheck_bundle(Bundle.load(mixed, verify="used"))["artifacts"]}
    assert rows["onnx"]["result"] == "FAIL"
    assert "cannot be loaded although onnxruntime is installed" in rows["onnx"]["reason"]
