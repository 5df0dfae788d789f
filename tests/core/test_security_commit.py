"""Export commit: the destination always holds the old or the new complete bundle (or the old one is put
back), a SIGKILLed export's leftovers are cleaned by the next export, a full disk is one clear error."""
from __future__ import annotations

import errno
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from edgekit.core import publish
from edgekit.core.bundle import Bundle, BundleWriter, Manifest
from edgekit.core.errors import DiskFullError, ExportError
from edgekit.core.specs import TensorSpec
from tests.conftest import REPO

SPEC = [TensorSpec("x", "float32", (1,))]
WRITER = r"""
import sys, time
from edgekit.core import publish
from edgekit.core.bundle import BundleWriter, Manifest
from edgekit.core.specs import TensorSpec
out, step, exchange = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
if not exchange:
    publish.exchange = lambda a, b: False
def pause(s):
    if s == step:
        print("paused", flush=True)
        time.sleep(120)
publish._checkpoint = pause
spec = [TensorSpec("x", "float32", (1,))]
m = Manifest("m", spec, spec, {})
with BundleWriter(out, "m") as w:
    w.add_file(m, "a.bin", b"new")
    w.commit(m)
"""


def _export(out: Path, content: bytes) -> Path:
    m = Manifest("m", SPEC, SPEC, {})
    with BundleWriter(out, "m") as w:
        w.add_file(m, "a.bin", content)
        return w.commit(m)


def _content(dest: Path) -> bytes:
    return Bundle.load(dest).file("a.bin").read_bytes()


def _kill_at(out: Path, step: str, exchange: bool) -> None:
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(out), step, "1" if exchange else "0"], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ready, _, _ = select.select([p.stdout], [], [], 60)
        assert ready and p.stdout.readline().strip() == b"paused", p.stderr.read().decode()
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
    finally:
        if p.poll() is None:
            p.kill()


def _exchange_works() -> bool:
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "a").mkdir()
        (Path(d) / "b").mkdir()
        return publish.exchange(Path(d) / "a", Path(d) / "b")


@pytest.mark.parametrize("step,exchange,left", [
    ("staged", True, b"old"),       # killed before the switch: the old bundle stays
    ("swapped", True, b"new"),      # killed after the atomic exchange, before the old one was removed
    ("moved-old", False, b"old"),   # no exchange here: killed between the two renames, the old one is put back
])
def test_sigkill_at_every_step_keeps_a_complete_bundle(tmp_path, caplog, step, exchange, left):
    if exchange and not _exchange_works():
        pytest.skip("this filesystem has no atomic directory exchange")
    dest = _export(tmp_path, b"old")
    _kill_at(tmp_path, step, exchange)
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != "m.edgekit")
    assert leftovers and all(n.startswith(".m.edgekit.") for n in leftovers)
    with caplog.at_level(logging.WARNING, logger="edgekit"):
        assert _content(dest) == left  # a load puts a swapped-out bundle back when the destination is missing
        assert _export(tmp_path, b"next") == dest  # the next export cleans up and says so
    assert _content(dest) == b"next"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.edgekit"]
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "interrupted export" in said and all(n in said for n in leftovers)


def test_live_writers_leftovers_are_not_touched(tmp_path):
    dest = _export(tmp_path, b"old")
    live = tmp_path / f".m.edgekit.{os.getppid()}.abcd1234.tmp"  # a running process's staging directory
    live.mkdir()
    assert publish.recover(dest) == []
    assert live.exists()


def test_disk_full_is_one_clear_error_and_nothing_is_half_written(tmp_path):
    dest = _export(tmp_path, b"old")
    for exc in (OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x")),
                ExportError("no usable artifact was produced (onnx/fp32: OSError: [Errno 28] No space left on device)")):
        with pytest.raises(DiskFullError, match="no space left on the device holding") as info:
            with BundleWriter(tmp_path, "m") as w:
                w.add_file(Manifest("m", SPEC, SPEC, {}), "a.bin", b"partial")
                raise exc
        assert "free some disk space" in str(info.value) and len(str(info.value).splitlines()) == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m.edgekit"] and _content(dest) == b"old"
