"""The embedded default model: a small CNN for 8x8 handwritten digits (sklearn ``load_digits``).

Weights, a calibration sample and the held-out test split ship in ``edgekit/models/weights/``
(npz, no pickle); ``scripts/train_digits.py`` regenerates all three.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHTS = WEIGHTS_DIR / "digits_cnn.npz"
HELDOUT = WEIGHTS_DIR / "digits_heldout.npz"
CALIB = WEIGHTS_DIR / "digits_calib.npz"
LABELS = [str(i) for i in range(10)]
# raw pixels are integers 0..16; x = (raw / 16 - MEAN) / STD, layout NCHW [batch, 1, 8, 8] float32
SCALE, MEAN, STD = 1.0 / 16.0, 0.3, 0.4


def preprocess(raw: np.ndarray) -> np.ndarray:
    """Raw digits (N, 64) or (N, 8, 8) with values 0..16 -> model input (N, 1, 8, 8) float32."""
    x = np.asarray(raw, dtype=np.float32).reshape(-1, 1, 8, 8)
    return ((x * SCALE - MEAN) / STD).astype(np.float32)


def preprocessing_metadata() -> dict:
    return {"layout": "NCHW", "shape": [1, 8, 8], "dtype": "float32", "raw_range": [0, 16],
            "scale": SCALE, "mean": [MEAN], "std": [STD],
            "formula": "x = (raw * scale - mean) / std"}


def build_module():
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )


def load_module():
    import torch

    m = build_module()
    with np.load(WEIGHTS) as z:
        m.load_state_dict({k: torch.from_numpy(z[k].copy()) for k in z.files})
    return m.eval()


def heldout() -> tuple[np.ndarray, np.ndarray]:
    """(model-ready inputs, labels) of the held-out digits test split."""
    with np.load(HELDOUT) as z:
        return preprocess(z["raw"]), z["y"].astype(np.int64)


def calibration() -> list[dict[str, np.ndarray]]:
    with np.load(CALIB) as z:
        x = preprocess(z["raw"])
    return [{"x": x[i:i + 1]} for i in range(len(x))]


def builtin():
    from edgekit.exporters.source import ModelSource

    x, _ = heldout()
    return ModelSource(
        module=load_module(), example_inputs={"x": x[:1]}, output_names=["logits"],
        dynamic={"x": {0: "batch"}}, calibration=calibration, name="digits-cnn",
        description="small CNN for 8x8 handwritten digits (sklearn load_digits)",
        metadata={"task": "classification", "labels": LABELS, "preprocessing": preprocessing_metadata(),
                  "dataset": "sklearn load_digits (1797 images, 8x8, 10 classes)",
                  "heldout": "edgekit/models/weights/digits_heldout.npz"})
