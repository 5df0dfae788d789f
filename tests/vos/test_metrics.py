"""DAVIS-style J and F (numpy/scipy)."""
import numpy as np

from edgekit.vos.metrics import dataset_scores, f_boundary, j_region, seg2bmap, sequence_scores


def square(n=64, y=10, x=10, s=20):
    m = np.zeros((n, n), np.uint8)
    m[y:y + s, x:x + s] = 1
    return m


def test_j_basic():
    a = square()
    assert j_region(a, a) == 1.0
    assert j_region(a, np.zeros_like(a)) == 0.0
    assert j_region(np.zeros_like(a), np.zeros_like(a)) == 1.0
    b = square(x=20)  # half overlap: 200 / 600
    assert abs(j_region(a, b) - 200 / 600) < 1e-9


def test_seg2bmap_is_one_pixel_boundary():
    b = seg2bmap(square(s=10))
    # DAVIS seg2bmap marks the pixels where the mask changes toward +x/+y: a 10x10 square has 40 boundary px
    assert b.sum() == 40 and b.dtype == bool


def test_f_uses_davis_tolerance():
    a = square(n=64)
    # tolerance ceil(0.008 * diag(64x64)) = 1 px: a 1-px shift still matches, a 4-px shift does not fully
    assert f_boundary(a, square(n=64, x=11)) == 1.0
    assert f_boundary(a, square(n=64, x=14)) < 0.8
    assert f_boundary(a, np.zeros_like(a)) == 0.0
    assert f_boundary(np.zeros_like(a), np.zeros_like(a)) == 1.0
    big = np.zeros((480, 854), np.uint8)  # DAVIS 480p: tolerance ceil(0.008 * 978.8) = 8 px
    big[100:200, 100:200] = 1
    shifted = np.roll(big, 7, axis=1)
    assert f_boundary(big, shifted) == 1.0
    assert f_boundary(big, np.roll(big, 12, axis=1)) < 1.0


def test_sequence_excludes_first_and_last_frame():
    gt = np.stack([square()] * 5)
    pred = gt.copy()
    pred[0] = 0
    pred[4] = 0  # first and last frames are not scored
    s = sequence_scores(pred, gt)
    assert s["J"] == 1.0 and s["F"] == 1.0 and s["frames"] == 3
    d = dataset_scores([s, {"J": 0.5, "F": 0.7}])
    assert d["J"] == 75.0 and d["F"] == 85.0 and d["JF"] == 80.0
