"""Synthetic VOS videos with exact masks (numpy only; images from scikit-image).

Each video: a real photo/texture background (optionally panning slowly), one target object
(analytic blob / ellipse / rotated rectangle shape, textured with a crop of a real photo or a
flat colour) that moves in piecewise segments — pauses, slow drifts, fast moves — with scale
changes, plus distractor objects (some with the same texture as the target) passing behind or in
front of it (occlusion).  The target mask is computed from the same analytic shape that renders
the pixels, minus whatever is drawn in front of it, so it is exact by construction.

Splits are disjoint generator seeds: train = SPLIT_BASE["train"] + i, etc.
"""
from __future__ import annotations

import functools

import numpy as np

from edgekit.core.errors import DataError

SPLIT_BASE = {"train": 0, "val": 100_000, "test": 200_000}
_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "brick", "grass", "gravel", "camera",
           "coins", "moon", "hubble_deep_field", "retina", "immunohistochemistry", "horse",
           "page", "text", "logo", "colorwheel", "microaneurysms", "cell")
# segment kinds: (probability, speed range px/frame at 128 px)
_SEGMENTS = (("pause", 0.40, (0.0, 0.0)), ("slow", 0.40, (0.15, 0.9)), ("fast", 0.20, (2.0, 5.0)))


@functools.lru_cache(maxsize=1)
def photos() -> tuple[np.ndarray, ...]:
    """The real images shipped inside scikit-image, as float32 RGB in [0, 1]."""
    try:
        import skimage.data as skd
    except ImportError as e:  # pragma: no cover - depends on environment
        raise DataError("scikit-image is needed for the synthetic VOS videos",
                        hint='pip install "edgekit[vos]" (scikit-image)') from e
    out = []
    for name in _PHOTOS:
        try:
            im = np.asarray(getattr(skd, name)())
        except Exception:  # noqa: BLE001 - an image that needs a download is simply skipped
            continue
        im = im.astype(np.float32)
        im = im / (255.0 if im.max() > 1.5 else max(float(im.max()), 1e-6))
        if im.ndim == 2:
            im = np.repeat(im[..., None], 3, axis=2)
        im = im[..., :3]
        if min(im.shape[:2]) >= 64:
            out.append(np.ascontiguousarray(im))
    if len(out) < 4:
        raise DataError("too few scikit-image sample images are available offline",
                        hint="reinstall scikit-image (its wheel ships the sample images)")
    return tuple(out)


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    ys = np.clip(((np.arange(h) + 0.5) * img.shape[0] / h).astype(int), 0, img.shape[0] - 1)
    xs = np.clip(((np.arange(w) + 0.5) * img.shape[1] / w).astype(int), 0, img.shape[1] - 1)
    return img[ys][:, xs]


def _crop(rng, img, size):
    h, w = img.shape[:2]
    s = int(min(h, w, max(16, size)))
    y = rng.integers(0, h - s + 1)
    x = rng.integers(0, w - s + 1)
    return img[y:y + s, x:x + s]


class _Object:
    """An analytic shape with a texture, moving along piecewise segments."""

    def __init__(self, rng, H, W, T, radius, texture, fast_ok=True):
        self.kind = rng.choice(["blob", "ellipse", "rect"], p=[0.5, 0.3, 0.2])
        self.R = float(radius)
        self.aspect = rng.uniform(0.55, 1.0)
        self.theta = rng.uniform(0, np.pi)
        self.k = int(rng.choice([0, 3, 4, 5, 6]))
        self.amp = rng.uniform(0.1, 0.35) if self.k else 0.0
        self.phi = rng.uniform(0, 2 * np.pi)
        self.tex = texture
        self.tex_flat = None if texture.ndim == 3 else texture
        self.traj = self._trajectory(rng, H, W, T, fast_ok)

    def _trajectory(self, rng, H, W, T, fast_ok):
        pos = np.array([rng.uniform(0.25, 0.75) * H, rng.uniform(0.25, 0.75) * W])
        scale, out, t = 1.0, [], 0
        names = [s[0] for s in _SEGMENTS]
        probs = np.array([s[1] for s in _SEGMENTS])
        if not fast_ok:
            probs[2] = 0
        probs = probs / probs.sum()
        while t < T:
            kind = rng.choice(len(names), p=probs)
            lo, hi = _SEGMENTS[kind][2]
            length = int(rng.integers(4, 17)) if kind != 2 else int(rng.integers(3, 8))
            speed = rng.uniform(lo, hi)
            ang = rng.uniform(0, 2 * np.pi)
            vel = speed * np.array([np.sin(ang), np.cos(ang)])
            dscale = 1.0 if (kind == 0 or rng.random() < 0.6) else rng.uniform(0.985, 1.015)
            for _ in range(length):
                out.append((pos[0], pos[1], scale))
                pos = pos + vel
                for d, lim in ((0, H), (1, W)):  # bounce inside the frame
                    if pos[d] < 0.1 * lim or pos[d] > 0.9 * lim:
                        vel[d] = -vel[d]
                        pos[d] = np.clip(pos[d], 0.1 * lim, 0.9 * lim)
                scale = float(np.clip(scale * dscale, 0.6, 1.6))
            t += length
        return out[:T]

    def render(self, t, yy, xx):
        cy, cx, s = self.traj[t]
        R = self.R * s
        dy, dx = yy - cy, xx - cx
        c, si = np.cos(self.theta), np.sin(self.theta)
        u = (c * dx + si * dy) / R
        v = (-si * dx + c * dy) / (R * self.aspect)
        if self.kind == "rect":
            mask = (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85)
        else:
            rho = np.hypot(u, v)
            lim = 1.0 + self.amp * np.cos(self.k * np.arctan2(v, u) + self.phi)
            mask = rho <= lim
        # the texture moves (and scales) with the object
        th, tw = self.tex.shape[:2]
        ty = np.clip(((dy / s) / (2.8 * self.R) + 0.5) * th, 0, th - 1).astype(int)
        tx = np.clip(((dx / s) / (2.8 * self.R) + 0.5) * tw, 0, tw - 1).astype(int)
        return mask, self.tex[ty, tx]


def make_video(seed: int, frames: int = 24, size: tuple[int, int] = (128, 128)):
    """One video: (frames uint8 [T,H,W,3], masks uint8 {0,1} [T,H,W]). Deterministic in seed."""
    H, W = size
    rng = np.random.default_rng(seed)
    ims = photos()
    bg_src = ims[rng.integers(len(ims))]
    pan = rng.random() < 0.3
    zoom = rng.uniform(1.0, 1.5)
    ch, cw = int(min(bg_src.shape[0], H * zoom * 2)), int(min(bg_src.shape[1], W * zoom * 2))
    y0, x0 = rng.integers(0, bg_src.shape[0] - ch + 1), rng.integers(0, bg_src.shape[1] - cw + 1)
    win = int(min(ch, cw) * 0.7)
    pan_v = rng.uniform(-0.6, 0.6, size=2) if pan else np.zeros(2)

    def texture():
        if rng.random() < 0.2:
            col = rng.uniform(0, 1, size=3).astype(np.float32)
            noise = rng.normal(0, 0.04, size=(32, 32, 1)).astype(np.float32)
            return np.clip(col[None, None] + noise, 0, 1)
        return _crop(rng, ims[rng.integers(len(ims))], rng.integers(40, 160))

    radius = rng.uniform(0.12, 0.28) * min(H, W)
    target = _Object(rng, H, W, frames, radius, texture())
    distract = []
    for _ in range(int(rng.choice([0, 1, 2], p=[0.3, 0.45, 0.25]))):
        tex = target.tex if rng.random() < 0.35 else texture()  # look-alike distractor
        o = _Object(rng, H, W, frames, rng.uniform(0.08, 0.2) * min(H, W), tex)
        o.front = rng.random() < 0.4  # in front of the target: occludes it
        distract.append(o)

    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    gain = 1.0
    vid = np.empty((frames, H, W, 3), np.uint8)
    msk = np.empty((frames, H, W), np.uint8)
    for t in range(frames):
        oy = int(np.clip(win * 0 + (ch - win) / 2 + pan_v[0] * t, 0, ch - win))
        ox = int(np.clip((cw - win) / 2 + pan_v[1] * t, 0, cw - win))
        img = _resize(bg_src[y0 + oy:y0 + oy + win, x0 + ox:x0 + ox + win], H, W).copy()
        for o in distract:
            if not o.front:
                m, tx = o.render(t, yy, xx)
                img[m] = tx[m]
        m_t, tx = target.render(t, yy, xx)
        img[m_t] = tx[m_t]
        m_t = m_t.copy()
        for o in distract:
            if o.front:
                m, tx = o.render(t, yy, xx)
                img[m] = tx[m]
                m_t &= ~m
        gain = float(np.clip(gain + rng.normal(0, 0.005), 0.9, 1.1))  # slow light flicker
        img = img * gain + rng.normal(0, 0.012, size=img.shape)  # sensor noise
        vid[t] = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
        msk[t] = m_t
    if msk[0].sum() < 16:  # the first-frame mask must show the target: re-draw
        return make_video(seed + 7_919_000, frames, size)
    return vid, msk


def split_seeds(split: str, n: int) -> list[int]:
    if split not in SPLIT_BASE:
        raise DataError(f"unknown split {split!r}", hint=f"use one of {sorted(SPLIT_BASE)}")
    return [SPLIT_BASE[split] + i for i in range(n)]


def make_split(split: str, n: int, frames: int = 24, size=(128, 128)):
    """List of (frames, masks) for the split; seeds never overlap between splits."""
    return [make_video(s, frames, size) for s in split_seeds(split, n)]
