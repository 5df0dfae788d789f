"""Synthetic video generator: deterministic, exact masks, disjoint splits."""
import numpy as np
import pytest

from edgekit.core.errors import DataError
from edgekit.vos.data import make_video, split_seeds

pytest.importorskip("skimage")


def test_deterministic_and_shapes():
    v1, m1 = make_video(5, frames=12, size=(64, 80))
    v2, m2 = make_video(5, frames=12, size=(64, 80))
    assert v1.shape == (12, 64, 80, 3) and v1.dtype == np.uint8
    assert m1.shape == (12, 64, 80) and set(np.unique(m1)) <= {0, 1}
    assert np.array_equal(v1, v2) and np.array_equal(m1, m2)
    assert m1[0].sum() >= 16  # the first-frame mask shows the target
    v3, _ = make_video(6, frames=12, size=(64, 80))
    assert not np.array_equal(v1, v3)


def test_splits_disjoint():
    tr, va, te = (set(split_seeds(s, 1000)) for s in ("train", "val", "test"))
    assert not (tr & va) and not (tr & te) and not (va & te)
    with pytest.raises(DataError):
        split_seeds("dev", 3)


def test_motion_statistics_have_still_and_moving_frames():
    # across videos, many consecutive frames keep the mask (pauses) and some move fast
    ious = []
    for s in range(8):
        _, m = make_video(s, frames=24, size=(96, 96))
        for t in range(1, 24):
            u = np.logical_or(m[t], m[t - 1]).sum()
            ious.append(np.logical_and(m[t], m[t - 1]).sum() / max(u, 1))
    ious = np.array(ious)
    assert (ious > 0.99).mean() > 0.2   # still segments are common
    assert (ious < 0.8).mean() > 0.02   # and there are fast ones
