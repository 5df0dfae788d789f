"""One Session (or pipeline) shared by 8 threads: every caller gets its own, correct result."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import edgekit
from tests.fixtures.bundles import tokengate_bundle

THREADS, CALLS = 8, 24


def _hammer(run, feeds: list) -> list:
    """Run ``run`` on every feed from THREADS threads at once (each thread a different slice)."""
    start = threading.Barrier(THREADS)

    def worker(t: int) -> list:
        start.wait()
        return [(i, run(feeds[i])) for i in range(t, len(feeds), THREADS)]

    with ThreadPoolExecutor(THREADS) as ex:
        return [r for part in ex.map(worker, range(THREADS)) for r in part]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_one_session_many_threads(mixed_bundle, backend):
    sess = edgekit.load(mixed_bundle, backend=backend)
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((1 + i % 5, 1, 8, 8)).astype(np.float32)} for i in range(THREADS * CALLS)]
    want = [sess.run(f)["logits"] for f in feeds]  # single-thread reference
    got = _hammer(sess.run, feeds)
    assert len(got) == len(feeds)
    for i, out in got:
        assert out["logits"].shape == want[i].shape
        np.testing.assert_array_equal(out["logits"], want[i])


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_token_gating_pipeline_many_threads(tmp_path, backend):
    if backend == "openvino":
        pytest.importorskip("openvino")
    pipe = edgekit.load(tokengate_bundle(tmp_path), backend=backend)
    rng = np.random.default_rng(1)
    feeds = []
    for i in range(THREADS * 8):
        ids = rng.integers(1, 64, size=(1 + i % 3, 4 + i % 9))
        mask = np.ones_like(ids)
        mask[0, max(2, ids.shape[1] - i % 4):] = 0
        feeds.append({"input_ids": ids, "attention_mask": mask})

    def run(f):
        out = pipe.run(f)
        return out, [k.copy() for k in pipe.last_kept]  # last_kept is per thread

    want = [run(f) for f in feeds]
    for i, (out, kept) in _hammer(run, feeds):
        np.testing.assert_array_equal(out["logits"], want[i][0]["logits"])
        np.testing.assert_array_equal(out["tokens_per_layer"], want[i][0]["tokens_per_layer"])
        assert all(np.array_equal(a, b) for a, b in zip(kept, want[i][1]))


class _Exclusive:
    """A stand-in library call that fails if two threads are inside it at once."""

    def __init__(self) -> None:
        self.inside, self.overlaps = 0, 0
        self.guard = threading.Lock()

    def __call__(self, *args, **kwargs):
        with self.guard:
            self.inside += 1
            self.overlaps += self.inside > 1
        time.sleep(0.002)
        with self.guard:
            self.inside -= 1
        return {"y": np.ones(2, np.float32)}


def test_coreml_and_tensorrt_serialize_calls():
    """The backends that cannot run here (no Mac, no GPU): their run() holds a lock around the library."""
    from edgekit.runtimes.coreml import CoreMLBackend
    from edgekit.runtimes.tensorrt import TensorRTBackend

    cm = CoreMLBackend.__new__(CoreMLBackend)
    cm.model = type("M", (), {"predict": _Exclusive()})()
    cm.in_dtypes, cm.out_names, cm._lock = {}, ["y"], threading.Lock()
    trt = TensorRTBackend.__new__(TensorRTBackend)
    trt._lock, trt._run_locked = threading.Lock(), _Exclusive()
    for backend, probe in ((cm, cm.model.predict), (trt, trt._run_locked)):
        assert backend.concurrency == "serialized"
        _hammer(backend.run, [{"x": np.zeros(2, np.float32)}] * (THREADS * 4))
        assert probe.overlaps == 0
