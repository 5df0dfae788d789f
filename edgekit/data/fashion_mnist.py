"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (offline), digits fallback.

``load()`` returns float32 arrays shaped (N, 1, H, W), already normalised as recorded in
``PREPROCESSING``; labels int64.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from edgekit.core.errors import DataError

ROOT = Path(os.environ.get("EDGEKIT_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
          "Ankle boot"]
MEAN, STD = 0.2860, 0.3530
PREPROCESSING = {"input": "grayscale 28x28, pixel/255", "normalize": {"mean": [MEAN], "std": [STD]},
                 "layout": "NCHW float32"}
DIGITS_PREPROCESSING = {"input": "sklearn load_digits 8x8, pixel/16", "normalize": {"mean": [0.5], "std": [0.5]},
                        "layout": "NCHW float32"}


def available() -> bool:
    return (ROOT / "train-images-idx3-ubyte.gz").exists()


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    if not available():
        raise DataError(f"Fashion-MNIST not found under {ROOT}",
                        "apt-get install dataset-fashion-mnist, or set EDGEKIT_FASHION_MNIST")
    pre = "train" if split == "train" else "t10k"
    x = read_idx(ROOT / f"{pre}-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    y = read_idx(ROOT / f"{pre}-labels-idx1-ubyte.gz").astype(np.int64)
    return ((x - MEAN) / STD)[:, None], y


def load_digits(split: str = "train", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 8x8 digits (ships with scikit-learn), split 75/25 with a fixed seed."""
    from sklearn.datasets import load_digits as _ld

    d = _ld()
    x = (d.images.astype(np.float32) / 16.0 - 0.5) / 0.5
    y = d.target.astype(np.int64)
    idx = np.random.default_rng(seed).permutation(len(y))
    cut = int(0.75 * len(y))
    sel = idx[:cut] if split == "train" else idx[cut:]
    return x[sel, None], y[sel]


def load_any(split: str = "train") -> tuple[np.ndarray, np.ndarray, str]:
    """Fashion-MNIST when installed, else digits. Returns (x, y, name)."""
    if available():
        return (*load(split), "fashion-mnist")
    return (*load_digits(split), "digits")
