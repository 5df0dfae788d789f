"""The ExecuTorch backend: .pte sessions (dynamic batch within the exported bound, refusal above it),
threads sharing a session, and the torch-free import path saying what the backend needs."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import edgekit
from edgekit.core.errors import BackendUnavailableError, BundleError, InputShapeError
from edgekit.models.digits import heldout
from tests.conftest import run_cli

pytest.importorskip("executorch")


@pytest.fixture(scope="module")
def pte_bundle(tmp_path_factory):
    """The embedded default exported to ExecuTorch fp32 alone (dynamic batch), in this process."""
    from edgekit.models import registry

    return edgekit.export(registry.get("digits-cnn"), targets="executorch", out=tmp_path_factory.mktemp("pte")).root


@pytest.fixture(scope="module")
def sess(pte_bundle):
    return edgekit.load(pte_bundle, backend="executorch", precision="fp32")


def test_registered_and_opened_by_name(sess, pte_bundle):
    assert sess.backend_name == "executorch" and sess.artifact.target == "executorch"
    assert "executorch" in edgekit.runtimes.available_backends()
    # "auto" prefers the other backends; a bundle with only .pte artifacts still opens on executorch
    assert edgekit.load(pte_bundle).backend_name == "executorch"


def test_fp32_matches_pytorch_on_the_heldout_digits(sess):
    import torch

    from edgekit.models.digits import load_module

    x, y = heldout()
    with torch.inference_mode():
        ref = load_module()(torch.from_numpy(x)).numpy()
    got = np.concatenate([sess.run({"x": x[i:i + 64]})["logits"] for i in range(0, len(x), 64)])
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    assert (got.argmax(1) == ref.argmax(1)).all() and (got.argmax(1) == y).mean() > 0.95


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_dynamic_batch_up_to_the_bound(sess, batch):
    x, _ = heldout()
    assert sess.run({"x": x[:batch]})["logits"].shape == (batch, 10)


def test_a_batch_above_the_bound_is_refused_by_name(sess, pte_bundle):
    from edgekit.runtimes.bench import bench_bundle

    from edgekit.core.bundle import Bundle

    x, _ = heldout()
    assert sess.artifact.extra["dynamic_bounds"] == {"batch": [1, 64]}
    with pytest.raises(InputShapeError, match=r"batch 65 on axis 0, above the maximum 64") as info:
        sess.run({"x": x[:65]})
    assert "max_dim" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(InputShapeError, match="maximum 64"):  # the bench's bare call too (no native error)
        sess.backend.raw_call()({"x": x[:65]})
    rows = bench_bundle(Bundle.load(pte_bundle), batch=65, iters=2, warmup=0)
    assert [r["target"] for r in rows] == ["executorch"] and "maximum 64" in rows[0]["bench_error"]


def test_outputs_survive_the_next_call_and_strided_or_readonly_inputs_are_right(sess):
    x, _ = heldout()
    a = sess.run({"x": x[:4]})["logits"]
    kept = a.copy()
    sess.run({"x": x[4:8]})
    np.testing.assert_array_equal(a, kept)
    strided = np.asfortranarray(x[:4])           # ExecuTorch ignores strides: the backend must copy
    readonly = x[:4].copy()
    readonly.flags.writeable = False
    for feeds in (strided, readonly):
        np.testing.assert_array_equal(sess.run({"x": feeds})["logits"], kept)


def test_threads_sharing_a_session_each_get_their_own_result(pte_bundle):
    s = edgekit.load(pte_bundle, backend="executorch", precision="fp32")
    x, _ = heldout()
    chunks = [x[i * 8:(i + 1) * 8 + i] for i in range(6)]  # different batch sizes per thread
    want = [s.run({"x": c})["logits"] for c in chunks]
    errors, barrier = [], threading.Barrier(len(chunks))

    def work(i):
        barrier.wait()
        for _ in range(15):
            got = s.run({"x": chunks[i]})["logits"]
            if got.shape != want[i].shape or not np.array_equal(got, want[i]):
                errors.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(chunks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_a_missing_method_is_a_bundle_error(pte_bundle):
    from edgekit.runtimes.executorch import ExecuTorchBackend

    from edgekit.core.bundle import Bundle

    b = Bundle.load(pte_bundle)
    art = b.find("executorch", precision="fp32")
    bad = dataclasses.replace(art, extra={**art.extra, "method": "predict"})
    with pytest.raises(BundleError, match="has no method 'predict'"):
        ExecuTorchBackend(b.path(art), bad, b.graph("main"))


def test_without_torch_the_runtime_imports_and_the_backend_says_what_it_needs(pte_bundle, no_torch_env, tmp_path):
    code = ("import sys, edgekit, edgekit.runtimes\n"
            "from edgekit.core.errors import BackendUnavailableError\n"
            "assert 'executorch' in edgekit.runtimes.BACKENDS\n"
            "try:\n"
            f"    edgekit.load({str(pte_bundle)!r}, backend='executorch')\n"
            "except BackendUnavailableError as e:\n"
            "    print(e)\n"
            "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, **no_torch_env}, timeout=120)
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip()
    assert "torch" in line and 'pip install "edgekit[executorch]"' in line and "docs/mobile.md" in line, line
    np.savez(tmp_path / "x.npz", x=heldout()[0][:2])
    r = run_cli("run", pte_bundle, "--input", tmp_path / "x.npz", env=no_torch_env)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "edgekit[executorch]" in r.stderr.splitlines()[-1], r.stderr


def test_unavailable_reason_names_the_extra_and_torch(monkeypatch):
    from edgekit.runtimes import executorch as et

    real = et.importlib.util.find_spec
    monkeypatch.setattr(et.importlib.util, "find_spec", lambda m: None if m == "torch" else real(m))
    assert not et.ExecuTorchBackend.available()
    problem, fix = et.ExecuTorchBackend.unavailable_reason()
    assert "needs torch" in problem and fix == 'pip install "edgekit[executorch]"'
    with pytest.raises(BackendUnavailableError, match="needs torch"):
        et.import_executorch_runtime()
