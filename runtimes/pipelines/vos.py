"""Skip-path VOS frame loop (torch-free): stem -> gate -> heavy or light, carrying state.

State between frames: the running template (embedding of the last fully computed frame), the
previous score map, the last computed features (f8 of that frame) and the first-frame
foreground/background prototypes. A frame reuses (light path, score = previous + delta) when the
gate's p_reuse > tau; tau >= 1 never reuses. The same loop drives the PyTorch graphs
(``edgekit.vos.model.torch_pipeline``), so exported and PyTorch runs are comparable 1:1.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from edgekit.core.errors import DataError, UsageError

SCORE_AMP = 6.0  # first-frame score: SCORE_AMP * (2 * area-averaged mask - 1), as in training
GRAPHS = ("stem", "gate", "heavy", "light")


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] linear map: box (area) filter when shrinking, half-pixel bilinear when growing
    (the latter equals torch's interpolate(mode="bilinear", align_corners=False))."""
    if n_out < n_in:
        m = np.zeros((n_out, n_in), np.float32)
        edges = np.arange(n_out + 1) * n_in / n_out
        for i in range(n_out):
            a, b = edges[i], edges[i + 1]
            lo, hi = int(np.floor(a)), int(np.ceil(b))
            for j in range(lo, min(hi, n_in)):
                m[i, j] = min(b, j + 1) - max(a, j)
            m[i] /= m[i].sum()
        return m
    src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
    j0 = np.minimum(np.floor(src).astype(int), n_in - 1)
    j1 = np.minimum(j0 + 1, n_in - 1)
    w1 = (src - j0).astype(np.float32)
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), j0] += 1 - w1
    m[np.arange(n_out), j1] += w1
    return m


def resize2d(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Resize the last two axes of ``a`` (float) with :func:`resize_matrix`."""
    ry, rx = resize_matrix(a.shape[-2], h), resize_matrix(a.shape[-1], w)
    return np.einsum("ij,...jk,lk->...il", ry, a.astype(np.float32), rx, optimize=True)


def preprocess(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H,W,3] video frame -> float32 [1,3,h,w] in [0,1] at the model size (area filter)."""
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise DataError(f"a video frame must be H x W x 3 (RGB), got shape {list(frame.shape)}",
                        hint="convert the video to RGB")
    h, w = size
    if frame.shape[:2] != (h, w):
        from PIL import Image  # area (box) filter; torch-free
        small = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)).resize((w, h), Image.BOX)
        x = np.moveaxis(np.asarray(small, dtype=np.float32), 2, 0)
    else:
        x = np.moveaxis(frame.astype(np.float32), 2, 0)
    return np.ascontiguousarray((x / 255.0)[None], dtype=np.float32)


def binary_mask(a: np.ndarray) -> np.ndarray:
    """[H,W] ids / [H,W,C] image -> uint8 {0,1}: nonzero = object. With an alpha channel (LA / RGBA)
    that has transparent pixels, transparent = background; a mask drawn only in alpha (colour all
    zero) uses the alpha channel itself."""
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] in (1, 2, 3, 4):
        colour = a[..., :3].max(axis=2) if a.shape[2] != 2 else a[..., 0]
        if a.shape[2] in (2, 4):
            alpha = a[..., -1]
            if (alpha == 0).any():
                m = (colour > 0) & (alpha > 0)
                return (m if m.any() else alpha > 0).astype(np.uint8)
        a = colour
    return (a > 0).astype(np.uint8)


@dataclass
class VOSResult:
    masks: np.ndarray                      # uint8 [T,H,W] in {0,1}, video size
    reused: list[bool]                     # per frame (frame 0: False)
    p_reuse: list[float]                   # gate output per frame (frame 0: nan)
    frame_ms: list[float] = field(default_factory=list)  # wall time per frame (model + pre/post)

    @property
    def reuse_rate(self) -> float:
        n = len(self.reused) - 1
        return float(sum(self.reused[1:]) / n) if n > 0 else 0.0

    @property
    def fps(self) -> float:
        t = sum(self.frame_ms[1:]) / 1000.0
        return float((len(self.frame_ms) - 1) / t) if t > 0 else float("nan")


def _load_base():
    from edgekit.runtimes.pipelines import PipelineBase
    return PipelineBase


class VOSPipeline:
    """Runs a ``vos_skip`` bundle: ``VOSPipeline(bundle, backend).run(frames, first_mask, tau=0.7)``."""

    kind = "vos_skip"

    def __init__(self, bundle: Any = None, backend: str = "auto", precision: str | None = None, **options: Any):
        base = _load_base()(bundle, backend=backend, precision=precision, **options)
        self.bundle, self.backend_name = bundle, base.backend_name
        self.inputs, self.outputs = base.inputs, base.outputs
        missing = [g for g in GRAPHS if g not in base.sessions]
        if missing:
            from edgekit.core.errors import BundleError
            raise BundleError(f"VOS bundle {bundle.root.name} lacks graphs {missing}",
                              hint="re-export with edgekit.vos.export_bundle")
        self._setup({g: base.sessions[g] for g in GRAPHS}, base.params)

    @classmethod
    def from_sessions(cls, sessions: dict[str, Any], params: dict) -> "VOSPipeline":
        self = cls.__new__(cls)
        self.bundle, self.backend_name = None, next(iter(sessions.values())).backend_name
        self.inputs, self.outputs = [], []
        self._setup(sessions, params)
        return self

    def _setup(self, sessions: dict[str, Any], params: dict) -> None:
        self.params = dict(params)
        self.size = tuple(int(s) for s in self.params.get("size", (128, 128)))
        self.tau = float(self.params.get("tau", 0.7))
        self.emb_channels = int(self.params.get("emb_channels", 32))
        self._run = {g: (s.run_raw if hasattr(s, "run_raw") else s.run) for g, s in sessions.items()}

    def __call__(self, *args: Any, **kwargs: Any) -> VOSResult:
        return self.run(*args, **kwargs)

    # ------------------------------------------------------------------ the frame loop
    def run(self, frames: Iterable[np.ndarray], first_mask: np.ndarray, tau: float | None = None,
            on_frame: Callable[[int, np.ndarray, bool], None] | None = None, keep: bool = True) -> VOSResult:
        """frames: iterable of uint8 [H,W,3]; first_mask: [H,W] (nonzero = object).
        ``on_frame(i, mask, reused)`` streams results; ``keep=False`` does not hold all masks in memory."""
        tau = self.tau if tau is None else float(tau)
        if not 0.0 <= tau <= 1.0:
            raise UsageError(f"tau must be in [0, 1], got {tau}", hint="use e.g. --tau 0.7 (1 = never reuse)")
        it = iter(frames)
        try:
            frame0 = next(it)
        except StopIteration:
            raise DataError("the video has no frames", hint="check the file decodes (ffmpeg)") from None
        mask0 = self.check_mask(first_mask, frame0.shape[:2])
        H, W = frame0.shape[:2]
        h8, w8 = self.size[0] // 8, self.size[1] // 8
        up_y, up_x = resize_matrix(h8, H), resize_matrix(w8, W)  # score map -> video size
        t0 = time.perf_counter()
        st = self.start(frame0, mask0)
        masks, reused, probs, times = [mask0], [False], [float("nan")], [(time.perf_counter() - t0) * 1e3]
        if on_frame:
            on_frame(0, mask0, False)
        for i, frame in enumerate(it, start=1):
            if frame.shape[:2] != (H, W):
                raise DataError(f"frame {i} is {frame.shape[1]}x{frame.shape[0]}, frame 0 was {W}x{H}",
                                hint="all frames of a video must have the same size")
            t0 = time.perf_counter()
            score, reuse, p = self.step(st, frame, tau)
            m = ((up_y @ score[0, 0] @ up_x.T) > 0).astype(np.uint8)
            times.append((time.perf_counter() - t0) * 1e3)
            if keep:
                masks.append(m)
            reused.append(reuse)
            probs.append(p)
            if on_frame:
                on_frame(i, m, reuse)
        return VOSResult(np.stack(masks) if keep else np.zeros((0, H, W), np.uint8), reused, probs, times)

    @staticmethod
    def check_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
        mask = np.asarray(mask)
        if mask.ndim == 3:  # RGB(A) image
            mask = binary_mask(mask)
        if mask.ndim != 2:
            raise DataError(f"the first-frame mask must be a 2-D image, got shape {list(mask.shape)}",
                            hint="give a single-channel PNG (0 = background, nonzero = object)")
        if mask.shape != tuple(hw):
            raise DataError(f"the first-frame mask is {mask.shape[1]}x{mask.shape[0]} but the video is "
                            f"{hw[1]}x{hw[0]}", hint="draw the mask on the video's first frame at its size")
        m = (mask > 0).astype(np.uint8)
        if not m.any():
            raise DataError("the first-frame mask is empty: there is no object to track",
                            hint="mark the object with nonzero pixels (e.g. 255) in the mask PNG")
        return m

    def start(self, frame0: np.ndarray, mask0: np.ndarray) -> dict:
        """Frame 0: features, template and first-frame prototypes from the given mask."""
        h8, w8 = self.size[0] // 8, self.size[1] // 8
        m8 = resize2d(mask0.astype(np.float32), h8, w8)[None, None]
        prev = (SCORE_AMP * (2.0 * m8 - 1.0)).astype(np.float32)
        f8 = self._run["stem"]({"image": preprocess(frame0, self.size)})["f8"]
        tmpl0 = np.zeros((1, self.emb_channels, h8, w8), np.float32)
        emb = self._run["gate"]({"f8": f8, "prev_score": prev, "template": tmpl0})["emb"]
        kdim = int(self.params.get("key_channels", 64))
        zero = np.zeros((1, kdim), np.float32)
        key = self._run["heavy"]({"f8": f8, "prev_score": prev, "fg": zero, "bg": zero})["key"]
        w = m8[0]  # [1,h,w]
        fg = (key[0] * w).sum((1, 2)) / max(float(w.sum()), 1e-3)
        bg = (key[0] * (1 - w)).sum((1, 2)) / max(float((1 - w).sum()), 1e-3)
        return {"prev": prev, "template": emb, "last_f8": f8,
                "fg": fg[None].astype(np.float32), "bg": bg[None].astype(np.float32)}

    def step(self, st: dict, frame: np.ndarray, tau: float) -> tuple[np.ndarray, bool, float]:
        f8 = self._run["stem"]({"image": preprocess(frame, self.size)})["f8"]
        g = self._run["gate"]({"f8": f8, "prev_score": st["prev"], "template": st["template"]})
        p = float(np.asarray(g["p_reuse"]).reshape(-1)[0])
        reuse = tau < 1.0 and p > tau
        if reuse:
            score = self._run["light"]({"emb": g["emb"], "template": st["template"],
                                        "prev_score": st["prev"]})["score"]
        else:
            score = self._run["heavy"]({"f8": f8, "prev_score": st["prev"], "fg": st["fg"],
                                        "bg": st["bg"]})["score"]
            st["template"], st["last_f8"] = g["emb"], f8
        st["prev"] = np.ascontiguousarray(score, dtype=np.float32)
        return st["prev"], reuse, p
