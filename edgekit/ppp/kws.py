"""Synthetic keyword-spotting set (Debian speech synthesizers) + numpy log-mel features.

The waveforms are made by ``scripts/make_kws.py`` with flite and espeak-ng voices (speed, pitch,
background noise, time shift varied); voices are disjoint between train and test. The features
file (default ``~/.cache/edgekit/ppp_kws.npz``, or ``$EDGEKIT_KWS_FEATURES``) holds uint8-quantised
log-mel spectrograms, labels and the voice of every sample.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgekit.core.errors import DataError

KEYWORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
SR = 16000
N_MELS, N_FFT, WIN, HOP = 40, 512, 400, 320  # 25 ms window, 20 ms hop -> 49 frames per second
LOG_MIN, LOG_MAX = -12.0, 4.0  # quantisation range of log(mel power + 1e-6)
PREPROCESSING = {"input": "mono 16 kHz, 1 s (pad/crop)", "features": "log-mel",
                 "n_mels": N_MELS, "n_fft": N_FFT, "win_length": WIN, "hop_length": HOP, "window": "hann",
                 "log": "ln(mel_power + 1e-6)", "normalize": "(logmel - mean) / std with the stored mean/std",
                 "layout": "N x 1 x 40 x 49 float32"}


def default_path() -> Path:
    return Path(os.environ.get("EDGEKIT_KWS_FEATURES", Path.home() / ".cache" / "edgekit" / "ppp_kws.npz"))


def mel_filterbank(sr=SR, n_fft=N_FFT, n_mels=N_MELS, fmin=20.0, fmax=None) -> np.ndarray:
    fmax = fmax or sr / 2
    hz2mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    mel2hz = lambda m: 700.0 * (10 ** (m / 2595.0) - 1.0)  # noqa: E731
    pts = mel2hz(np.linspace(hz2mel(fmin), hz2mel(fmax), n_mels + 2))
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    fb = np.zeros((n_mels, len(freqs)), dtype=np.float32)
    for i in range(n_mels):
        lo, c, hi = pts[i], pts[i + 1], pts[i + 2]
        fb[i] = np.clip(np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c)), 0, None)
    return fb


_FB = None


def logmel(wave: np.ndarray) -> np.ndarray:
    """1 s of 16 kHz audio -> (40, 49) float32 ln(mel power + 1e-6)."""
    global _FB
    if _FB is None:
        _FB = mel_filterbank()
    w = np.zeros(SR, dtype=np.float32)
    w[:min(SR, len(wave))] = wave[:SR]
    n = 1 + (SR - WIN) // HOP
    frames = np.lib.stride_tricks.sliding_window_view(w, WIN)[::HOP][:n] * np.hanning(WIN).astype(np.float32)
    spec = np.abs(np.fft.rfft(frames, n=N_FFT, axis=1)) ** 2
    return np.log(spec @ _FB.T + 1e-6).T.astype(np.float32)


def quantize(lm: np.ndarray) -> np.ndarray:
    return np.round((np.clip(lm, LOG_MIN, LOG_MAX) - LOG_MIN) / (LOG_MAX - LOG_MIN) * 255).astype(np.uint8)


def dequantize(q: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) / 255 * (LOG_MAX - LOG_MIN) + LOG_MIN


def load(path=None, with_voices: bool = False):
    """(x_train, y_train, x_test, y_test, meta); x normalised float32 (N, 1, 40, 49)."""
    p = Path(path) if path else default_path()
    if not p.exists():
        raise DataError(f"KWS features not found at {p}", "generate them: python scripts/make_kws.py")
    with np.load(p, allow_pickle=False) as z:
        d = {k: z[k] for k in z.keys()}
    mean, std = float(d["mean"]), float(d["std"])
    norm = lambda q: ((dequantize(q) - mean) / std)[:, None]  # noqa: E731
    meta = {"dataset": "edgekit-synthetic-kws", "labels": KEYWORDS,
            "preprocessing": {**PREPROCESSING, "mean": mean, "std": std},
            "train_voices": sorted(set(d["train_voice"].tolist())), "test_voices": sorted(set(d["test_voice"].tolist()))}
    out = (norm(d["x_train"]), d["y_train"].astype(np.int64), norm(d["x_test"]), d["y_test"].astype(np.int64), meta)
    if with_voices:
        return (*out, d["train_voice"], d["test_voice"])
    return out
