"""Session policy on every backend here: non-finite inputs, empty inputs, backend failures."""
from __future__ import annotations

import numpy as np
import pytest

import edgekit
from edgekit.core.errors import InferenceError, InputShapeError, NonFiniteInputError, UsageError
from edgekit.models.digits import heldout
from tests.conftest import assert_user_error, run_cli
from tests.fixtures.bundles import copy, edit_manifest

BACKENDS = ["onnxruntime", "openvino"]


@pytest.fixture(scope="module")
def loose(mixed_bundle, tmp_path_factory):
    """The same bundle, its manifest claiming a symbolic height the graphs do not have: inputs pass the
    checks and the backend itself rejects them (a failure after the checks)."""
    b = copy(mixed_bundle, tmp_path_factory.mktemp("loose"))

    def symbolic_height(m):
        for specs in (m["inputs"], m["graphs"]["main"]["inputs"]):
            specs[0]["shape"][2] = "h"
    edit_manifest(b, symbolic_height)
    return b


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_inputs_are_refused_by_default(mixed_bundle, backend, bad):
    sess = edgekit.load(mixed_bundle, backend=backend)
    x = heldout()[0][:4].copy()
    x[2, 0, 3, 3] = bad
    with pytest.raises(NonFiniteInputError, match="'x' holds NaN or infinite values") as info:
        sess.run({"x": x})
    assert "allow_nonfinite" in str(info.value)
    assert np.isfinite(sess.run({"x": heldout()[0][:4]})["logits"]).all()  # still usable


@pytest.mark.parametrize("backend", BACKENDS)
def test_allow_nonfinite_passes_them_through(mixed_bundle, backend):
    x = np.full((1, 1, 8, 8), np.nan, np.float32)
    for allow in (True, ["x"], "x"):
        out = edgekit.load(mixed_bundle, backend=backend, allow_nonfinite=allow).run({"x": x})["logits"]
        assert out.shape == (1, 10)
    with pytest.raises(UsageError, match="unknown input"):
        edgekit.load(mixed_bundle, backend=backend, allow_nonfinite=["mask"])


def test_finiteness_check_is_exact():
    """The fast check (a dot product with zeros) must see one NaN/inf anywhere, and no overflow of huge values."""
    from edgekit.runtimes.base import _finite

    rng = np.random.default_rng(0)
    for dtype, zeros in ((np.float32, {}), (np.float64, {}), (np.float16, None), (np.float32, None)):
        for n in (1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 64, 65, 127, 255, 1000, 4097):
            v = rng.standard_normal(n).astype(dtype)
            assert _finite(v, zeros) and _finite(np.full(n, np.finfo(dtype).max, dtype), zeros)
            assert _finite(v[::2], zeros) and _finite(v.reshape(1, -1, 1), zeros)
            for pos in {0, n // 2, n - 1}:
                for bad in (np.nan, np.inf, -np.inf):
                    w = v.copy()
                    w[pos] = bad
                    with np.errstate(invalid="ignore"):
                        assert not _finite(w, zeros), (dtype, n, pos, bad)


def test_huge_finite_values_are_accepted(mixed_bundle):
    sess = edgekit.load(mixed_bundle, backend="onnxruntime")
    assert sess.run({"x": np.full((2, 1, 8, 8), 3e38, np.float32)})["logits"].shape == (2, 10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_is_an_input_error_and_the_session_survives(mixed_bundle, backend):
    sess = edgekit.load(mixed_bundle, backend=backend)
    with pytest.raises(InputShapeError, match="'x' is empty"):
        sess.run({"x": np.zeros((0, 1, 8, 8), np.float32)})
    x = heldout()[0][:3]
    assert sess.run({"x": x})["logits"].shape == (3, 10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_failure_is_an_inference_error_and_the_session_survives(loose, backend):
    sess = edgekit.load(loose, backend=backend)
    x = heldout()[0][:3]
    want = sess.run({"x": x})["logits"]
    with pytest.raises(InferenceError, match=f"{backend} failed on inputs x\\[2, 1, 9, 8\\]") as info:
        sess.run({"x": np.zeros((2, 1, 9, 8), np.float32)})
    assert len(str(info.value).splitlines()) == 1
    np.testing.assert_array_equal(sess.run({"x": x})["logits"], want)


def test_cli_run_refuses_nan_input_unless_allowed(mixed_bundle, tmp_path):
    x = np.full((1, 1, 8, 8), np.nan, np.float32)
    np.savez(tmp_path / "nan.npz", x=x)
    assert_user_error(run_cli("run", mixed_bundle, "--input", tmp_path / "nan.npz"), "NaN or infinite",
                      "EDGEKIT_ALLOW_NONFINITE")
    r = run_cli("run", mixed_bundle, "--input", tmp_path / "nan.npz", "-b", "onnxruntime",
                env={"EDGEKIT_ALLOW_NONFINITE": "x,mask"})
    assert r.returncode == 0 and "logits" in r.stdout, r.stderr
