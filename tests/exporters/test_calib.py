"""Calibration data loading: .npz, directory of .npy, array, dict, iterable of dicts, and clear errors."""
from __future__ import annotations

import numpy as np
import pytest

from edgekit.core.errors import DataError
from edgekit.exporters.calib import load_calibration, save_calibration
from edgekit.core.specs import TensorSpec

IMG = [TensorSpec("x", "float32", ("batch", 3, 4, 4))]
TXT = [TensorSpec("input_ids", "int64", ("batch", "seq")), TensorSpec("attention_mask", "int64", ("batch", "seq"))]


def test_npz_batch_and_stack_layouts(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "batch.npz", images=rng.standard_normal((5, 3, 4, 4)))  # any key for 1 input
    s = load_calibration(tmp_path / "batch.npz", IMG)
    assert len(s) == 5 and s[0]["x"].shape == (1, 3, 4, 4) and s[0]["x"].dtype == np.float32
    np.savez(tmp_path / "stack.npz", x=rng.standard_normal((4, 2, 3, 4, 4)).astype(np.float32))
    s = load_calibration(str(tmp_path / "stack.npz"), IMG)
    assert len(s) == 4 and s[0]["x"].shape == (2, 3, 4, 4)
    assert len(load_calibration(tmp_path / "batch.npz", IMG, limit=2)) == 2


def test_directory_of_npy(tmp_path):
    per_sample = tmp_path / "samples"
    per_sample.mkdir()
    for i in range(3):
        np.save(per_sample / f"{i:03d}.npy", np.full((3, 4, 4), i, np.float32))  # no batch axis: added
    s = load_calibration(per_sample, IMG)
    assert [float(x["x"].mean()) for x in s] == [0.0, 1.0, 2.0] and s[0]["x"].shape == (1, 3, 4, 4)
    per_input = tmp_path / "inputs"
    per_input.mkdir()
    np.save(per_input / "input_ids.npy", np.ones((6, 8), np.int64))
    np.save(per_input / "attention_mask.npy", np.ones((6, 8), np.int32))  # int32 -> int64 is fine
    s = load_calibration(per_input, TXT)
    assert len(s) == 6 and s[0]["attention_mask"].dtype == np.int64 and s[0]["input_ids"].shape == (1, 8)


def test_array_dict_and_iterable():
    arr = np.zeros((3, 3, 4, 4), np.float64)
    assert len(load_calibration(arr, IMG)) == 3
    rows = load_calibration(({"input_ids": np.ones((1, 5), np.int64), "attention_mask": np.ones((1, 5), np.int64)}
                             for _ in range(4)), TXT)
    assert len(rows) == 4
    d = load_calibration({"input_ids": np.ones((2, 5), np.int64), "attention_mask": np.ones((2, 5), np.int64)}, TXT)
    assert len(d) == 2
    assert load_calibration(None, IMG) is None


def test_roundtrip_save(tmp_path):
    s = load_calibration(np.ones((2, 3, 4, 4), np.float32), IMG)
    p = save_calibration(s, tmp_path / "c.npz")
    assert len(load_calibration(p, IMG)) == 2


@pytest.mark.parametrize("calib,match", [
    ({"input_ids": np.ones((2, 5), np.int64)}, "no array for input"),
    (np.ones((2, 5)), "bare array"),
    ([{"input_ids": np.ones((1, 5), np.float32), "attention_mask": np.ones((1, 5), np.int64)}], "dtype float32"),
    ([{"input_ids": np.ones((5,), np.int64), "attention_mask": np.ones((5,), np.int64)}], "rank 1"),
    ([], "empty"),
    ({"input_ids": np.ones((2, 5), np.int64), "attention_mask": np.ones((3, 5), np.int64)}, "different sample counts"),
    (42, "unsupported calibration data"),
])
def test_errors(calib, match):
    with pytest.raises(DataError, match=match):
        load_calibration(calib, TXT)


def test_path_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_calibration(tmp_path / "nope.npz", IMG)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .npy"):
        load_calibration(tmp_path / "empty", IMG)
    np.save(tmp_path / "wrong.npy", np.ones((2, 3, 5, 5), np.float32))
    with pytest.raises(DataError, match="shape"):
        load_calibration(tmp_path / "wrong.npy", IMG)
    (tmp_path / "x.txt").write_text("1")
    with pytest.raises(DataError, match="neither"):
        load_calibration(tmp_path / "x.txt", IMG)
