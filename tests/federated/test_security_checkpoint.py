"""A damaged checkpoint (zero-length, truncated, flipped bits, missing keys, another format) is one
CheckpointError naming the file and the fix -- never a BadZipFile, KeyError or TypeError -- and the
server never silently starts over from scratch."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("flwr")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edgekit.federated.config import FedConfig  # noqa: E402
from edgekit.federated.errors import CheckpointError  # noqa: E402
from edgekit.federated.server import checkpoint as ckpt  # noqa: E402
from edgekit.federated.server.loop import AsyncServer  # noqa: E402
from edgekit.federated.sim.grid import VirtualGrid  # noqa: E402
from edgekit.federated.sim.nodes import make_profiles  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from tests.federated.helpers import user_error  # noqa: E402


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """The bytes of a real cloned checkpoint (2 core versions, a cache, one buffered update)."""
    from edgekit.federated.strategies.base import Update

    d = tmp_path_factory.mktemp("ckpt")
    grid = VirtualGrid(make_profiles(3, seed=0, horizon=400, churn=False, sec_per_example=0.02))
    srv = AsyncServer(grid, FedConfig(method="cloned", buffer_size=2, max_versions=2, max_time=2000.0, poll=1.0,
                                      checkpoint_dir=str(d)))
    srv.run()
    srv.strategy.add(Update(1000, srv.version, 50, {k: v.copy() for k, v in srv.core.items()}), srv.history)
    srv.save()
    assert srv.strategy.cache and srv.strategy.buffer
    return (d / ckpt.CKPT_NAME).read_bytes()


def _server(d):
    grid = VirtualGrid(make_profiles(3, seed=0, horizon=400, churn=False, sec_per_example=0.02))
    return AsyncServer(grid, FedConfig(method="cloned", buffer_size=2, max_versions=3, checkpoint_dir=str(d)))


def _assert_refused(d, says=""):
    """Both the loader and the server refuse it, naming the file and the fix."""
    p = d / ckpt.CKPT_NAME
    for attempt in (lambda: ckpt.load(d), lambda: _server(d)):
        with pytest.raises(CheckpointError) as err:
            attempt()
        text = str(err.value)
        assert str(p) in text and "fix:" in text and says in text, text


def _rewrite(raw: bytes, d, edit) -> None:
    """The checkpoint ``raw`` with its members edited by ``edit(header, arrays)``, saved in ``d``."""
    import io

    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        header = json.loads(bytes(z["__header__"]).decode())
        arrays = {k: z[k] for k in z.files if k != "__header__"}
    edit(header, arrays)
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    with open(d / ckpt.CKPT_NAME, "wb") as fh:
        np.savez(fh, **arrays)


def test_damaged_files_are_one_clear_error(tmp_path, good):
    p = tmp_path / ckpt.CKPT_NAME
    for data, says in ((b"", "unreadable or damaged"), (good[: len(good) // 2], "unreadable or damaged"),
                       (b"not a zip file\n", "unreadable or damaged")):
        p.write_bytes(data)
        _assert_refused(tmp_path, says)
    flipped = bytearray(good)
    for at in (len(good) // 3, len(good) // 2, 2 * len(good) // 3):  # inside array data: the CRC catches it
        flipped[at] ^= 0x40
    p.write_bytes(bytes(flipped))
    _assert_refused(tmp_path)
    with open(p, "wb") as fh:
        np.save(fh, np.zeros(3))  # a single .npy, not an archive
    _assert_refused(tmp_path)
    p.unlink()
    p.mkdir()
    _assert_refused(tmp_path, "not a regular file")


@pytest.mark.parametrize("edit, says", [
    (lambda h, a: h.pop("version"), "'version' is missing or malformed"),
    (lambda h, a: h.update(version="3"), "'version' is missing or malformed"),
    (lambda h, a: h.update(accepted=-1), "'accepted' is missing or malformed"),
    (lambda h, a: h.update(format="something/9"), "has format"),
    (lambda h, a: h["meta"].pop("curve"), "no curve"),
    (lambda h, a: [a.pop(k) for k in list(a) if k.startswith("core/")], "core model is missing"),
    (lambda h, a: a.update({k: np.full_like(v, np.nan) for k, v in a.items() if k.startswith("core/")}), "not finite"),
    (lambda h, a: h["strategy"].pop("cache"), "incomplete or malformed"),
    (lambda h, a: h["strategy"].update(buffer="x"), "incomplete or malformed"),
    (lambda h, a: h["strategy"]["buffer"].append({"node_id": 1}), "incomplete or malformed"),
    (lambda h, a: [a.pop(k) for k in list(a) if k.startswith("strategy/buffer/0/")], "incomplete or malformed"),
    (lambda h, a: a.update({k: np.zeros(1, np.float32) for k in list(a) if k.startswith("strategy/cache/0/")}),
     "incomplete or malformed"),
])
def test_missing_or_malformed_keys_are_one_clear_error(tmp_path, good, edit, says):
    _rewrite(good, tmp_path, edit)
    if says in ("incomplete or malformed",):  # the file is sound, its strategy state is not: the server refuses it
        with pytest.raises(CheckpointError, match=says) as err:
            _server(tmp_path)
        assert str(tmp_path / ckpt.CKPT_NAME) in str(err.value)
    else:
        _assert_refused(tmp_path, says)


def test_a_sound_checkpoint_resumes(tmp_path, good):
    (tmp_path / ckpt.CKPT_NAME).write_bytes(good)
    srv = _server(tmp_path)
    assert srv.resumed and srv.version == 2


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 10**9), flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(1, 255)), max_size=4))
def test_fuzzed_damage_is_a_checkpoint_error_or_an_unchanged_load(tmp_path_factory, good, cut, flips):
    d = tmp_path_factory.mktemp("fuzz")
    raw = bytearray(good[: max(0, len(good) - cut % (len(good) + 1))] if cut % 3 == 0 else good)
    for at, bits in flips:
        if raw:
            raw[at % len(raw)] ^= bits
    (d / ckpt.CKPT_NAME).write_bytes(bytes(raw))
    try:
        st_ = ckpt.load(d)
    except CheckpointError as err:
        assert str(d / ckpt.CKPT_NAME) in str(err)
        return
    assert st_ is not None  # a flip the formats cannot see (zip metadata) leaves the content as written
    with zipfile.ZipFile(d / ckpt.CKPT_NAME) as z:
        assert z.testzip() is None


def test_the_server_command_refuses_a_damaged_checkpoint_before_starting(tmp_path, good):
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / ckpt.CKPT_NAME).write_bytes(good[:100])
    out = tmp_path / "result.json"
    out.write_text("{}")
    res = run_cli("federated", "server", "--insecure", "--checkpoint-dir", tmp_path / "ck", "--out", out,
                  "--timeout", "5", timeout=120)
    user_error(res, str(tmp_path / "ck" / ckpt.CKPT_NAME), "unreadable or damaged", "fix:")
    assert out.read_text() == "{}" and (tmp_path / "ck" / ckpt.CKPT_NAME).read_bytes() == good[:100]
