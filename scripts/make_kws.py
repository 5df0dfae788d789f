"""Build the synthetic keyword-spotting set for PPP (no speech data is downloadable here).

Needs the Debian packages flite and espeak-ng (apt-get install -y flite espeak-ng).
Voices (synthesizer x accent x voice variant) are DISJOINT between train and test: test accents
and test variants never occur in training, and the flite test voices (slt, rms) are different
speakers. Each (voice, word) is synthesised at several speeds/pitches, trimmed, placed at a
random offset in a 1 s window, scaled, and mixed with background noise (white / pink / brown /
mains hum / babble made from other words of the same split) at 5-25 dB SNR.

    python scripts/make_kws.py [--out ~/.cache/edgekit/ppp_kws.npz] [--seed 0]
~1-2 minutes, one core. Output: uint8-quantised log-mel (40 x 49), labels, voice names, mean/std.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from math import gcd
from pathlib import Path

import numpy as np
from scipy.io import wavfile
from scipy.signal import lfilter, resample_poly

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edgekit.ppp.kws import KEYWORDS, SR, default_path, logmel, quantize  # noqa: E402

TRAIN_ESPEAK = [(a, v) for a in ["en", "en-us", "en-gb-x-rp", "en-gb-x-gbclan"] for v in ["m1", "m2", "m3", "f1", "f2"]][:16]
TEST_ESPEAK = [("en-gb-scotland", "m4"), ("en-029", "f3"), ("en-us-nyc", "m6"), ("en-gb-x-gbcwmd", "f4"),
               ("en-gb-scotland", "f4"), ("en-029", "m6")]
TRAIN_FLITE, TEST_FLITE = ["kal", "kal16", "awb"], ["slt", "rms"]


def _read(path: Path) -> np.ndarray:
    sr, w = wavfile.read(path)
    w = w.astype(np.float32) / 32768.0 if w.dtype == np.int16 else w.astype(np.float32)
    if w.ndim > 1:
        w = w.mean(1)
    if sr != SR:
        g = gcd(SR, sr)
        w = resample_poly(w, SR // g, sr // g).astype(np.float32)
    return w


def synth(voice: tuple, word: str, speed: float, pitch: float, tmp: Path) -> np.ndarray:
    out = tmp / "w.wav"
    if voice[0] == "espeak":
        cmd = ["espeak-ng", "-v", f"{voice[1]}+{voice[2]}", "-s", str(int(160 * speed)), "-p", str(int(pitch)),
               "-w", str(out), word]
    else:
        cmd = ["flite", "-voice", voice[1], "--setf", f"duration_stretch={1 / speed:.3f}",
               "--setf", f"int_f0_target_mean={int(70 + pitch * 1.4)}", "-t", word, "-o", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    return _read(out)


def trim(w: np.ndarray) -> np.ndarray:
    env = np.convolve(np.abs(w), np.ones(160) / 160, mode="same")
    idx = np.flatnonzero(env > 0.05 * env.max())
    return w[idx[0]: idx[-1] + 1] if len(idx) else w


def noise(kind: str, n: int, rng, babble_pool) -> np.ndarray:
    white = rng.standard_normal(n).astype(np.float32)
    if kind == "white":
        return white
    if kind == "pink":
        b = [0.049922035, -0.095993537, 0.050612699, -0.004408786]
        return lfilter(b, [1, -2.494956002, 2.017265875, -0.522189400], white).astype(np.float32)
    if kind == "brown":
        x = np.cumsum(white)
        return (x - np.convolve(x, np.ones(801) / 801, mode="same")).astype(np.float32)
    if kind == "hum":
        t = np.arange(n) / SR
        f0 = rng.choice([50.0, 60.0])
        return sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.28)) / k for k in range(1, 6)).astype(np.float32) + 0.1 * white
    out = np.zeros(n, dtype=np.float32)  # babble: 3 other words at random offsets
    for _ in range(3):
        w = babble_pool[rng.integers(len(babble_pool))]
        o = int(rng.integers(0, max(1, n - len(w))))
        out[o:o + len(w)] += w[: n - o]
    return out


def place(w, rng, babble_pool) -> np.ndarray:
    w = w[:SR] / (np.abs(w).max() + 1e-9) * rng.uniform(0.3, 0.9)
    x = np.zeros(SR, dtype=np.float32)
    o = int(rng.integers(0, SR - len(w) + 1))
    x[o:o + len(w)] = w
    nz = noise(rng.choice(["white", "pink", "brown", "hum", "babble"]), SR, rng, babble_pool)
    snr = rng.uniform(5, 25)
    p_sig = np.mean(w ** 2)
    nz *= np.sqrt(p_sig / (np.mean(nz ** 2) + 1e-12) / 10 ** (snr / 10))
    return x + nz


def build(voices, n_prosody, n_noise, rng, tmp):
    raw = []
    for v in voices:
        for y, word in enumerate(KEYWORDS):
            for _ in range(n_prosody):
                w = trim(synth(v, word, rng.uniform(0.75, 1.35), rng.uniform(25, 75), tmp))
                raw.append((w, y, "-".join(v)))
    pool = [r[0] for r in raw]
    xs, ys, vs = [], [], []
    for w, y, v in raw:
        for _ in range(n_noise):
            xs.append(quantize(logmel(place(w, rng, pool))))
            ys.append(y)
            vs.append(v)
    return np.stack(xs), np.array(ys, dtype=np.int8), np.array(vs)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(default_path()))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    rng = np.random.default_rng(a.seed)
    train_v = [("espeak", *v) for v in TRAIN_ESPEAK] + [("flite", v) for v in TRAIN_FLITE]
    test_v = [("espeak", *v) for v in TEST_ESPEAK] + [("flite", v) for v in TEST_FLITE]
    with tempfile.TemporaryDirectory() as t:
        xtr, ytr, vtr = build(train_v, 8, 3, rng, Path(t))
        xte, yte, vte = build(test_v, 6, 2, rng, Path(t))
    assert not set(vtr) & set(vte)
    from edgekit.ppp.kws import dequantize

    deq = dequantize(xtr)
    out = Path(a.out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.npz")
    np.savez_compressed(tmp, x_train=xtr, y_train=ytr, train_voice=vtr, x_test=xte, y_test=yte, test_voice=vte,
                        mean=np.float32(deq.mean()), std=np.float32(deq.std()), seed=a.seed)
    tmp.replace(out)
    print(f"wrote {out}: train {xtr.shape} ({len(set(vtr))} voices), test {xte.shape} ({len(set(vte))} voices)")


if __name__ == "__main__":
    main()
