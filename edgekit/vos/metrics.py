"""DAVIS-style VOS metrics (numpy + scipy only, usable on the runtime side).

J: region similarity, the IoU of predicted and ground-truth masks (both empty -> 1).
F: boundary F-measure as in the DAVIS benchmark code (davis2017-evaluation): one-pixel boundaries
   (seg2bmap), matched within a disk of radius ceil(0.008 * image diagonal) pixels.
Per sequence the first frame (given) and the last frame are left out, as the DAVIS evaluation
does; sequences of fewer than 3 frames use every frame after the first.
"""
from __future__ import annotations

import math

import numpy as np

BOUND_TH = 0.008  # DAVIS boundary tolerance, fraction of the image diagonal


def j_region(pred: np.ndarray, gt: np.ndarray) -> float:
    pred, gt = np.asarray(pred) > 0, np.asarray(gt) > 0
    union = np.logical_or(pred, gt).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, gt).sum() / union)


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary map of a binary mask (DAVIS seg2bmap, same-size case)."""
    seg = np.asarray(seg) > 0
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def _disk(r: int) -> np.ndarray:
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    return (x * x + y * y) <= r * r


def f_boundary(pred: np.ndarray, gt: np.ndarray, bound_th: float = BOUND_TH) -> float:
    from scipy.ndimage import binary_dilation
    pred, gt = np.asarray(pred) > 0, np.asarray(gt) > 0
    bound_pix = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(*pred.shape))
    fb, gb = seg2bmap(pred), seg2bmap(gt)
    n_fg, n_gt = int(fb.sum()), int(gb.sum())
    if n_fg == 0 and n_gt == 0:
        return 1.0
    if n_fg == 0 or n_gt == 0:
        return 0.0  # DAVIS: precision/recall (1,0) or (0,1) -> F = 0
    disk = _disk(int(bound_pix))
    fg_dil = binary_dilation(fb, structure=disk)
    gt_dil = binary_dilation(gb, structure=disk)
    precision = (fb & gt_dil).sum() / n_fg
    recall = (gb & fg_dil).sum() / n_gt
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def eval_frames(n: int) -> range:
    return range(1, n - 1) if n >= 3 else range(1, n)


def sequence_scores(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """J and F means over a sequence's evaluated frames ([T,H,W] masks)."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    idx = eval_frames(len(gt))
    if len(idx) == 0:
        return {"J": float("nan"), "F": float("nan"), "JF": float("nan"), "frames": 0}
    J = float(np.mean([j_region(pred[i], gt[i]) for i in idx]))
    F = float(np.mean([f_boundary(pred[i], gt[i]) for i in idx]))
    return {"J": J, "F": F, "JF": (J + F) / 2, "frames": len(idx)}


def dataset_scores(per_seq: list[dict[str, float]]) -> dict[str, float]:
    """Mean over sequences (DAVIS averages per-sequence means), reported in percent."""
    J = 100 * float(np.mean([s["J"] for s in per_seq]))
    F = 100 * float(np.mean([s["F"] for s in per_seq]))
    return {"J": round(J, 2), "F": round(F, 2), "JF": round((J + F) / 2, 2), "sequences": len(per_seq)}
