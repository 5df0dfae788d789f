"""PPP pieces shared by the PyTorch path and the torch-free ONNX path (numpy only, never torch).

* ``load_personal``   read + check the personal samples (.npz, same format as ``edgekit run --input``)
* ``prototype``       mean gate probability per gated unit over the personal samples (no labels)
* ``keep_masks``      prototype -> boolean keep-mask per unit (keep-ratio or threshold)
* ``COUPLING``        which tensors (and along which axis) each unit's gate controls
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from edgekit.core.errors import DataError, EdgekitError, UsageError


class NotPPPError(EdgekitError):
    """The model / bundle carries no PPP gate information."""


# unit kind -> [(parameter name inside the unit, axis sliced by the keep-mask)]; BN-folded names
# ("*.bias" of a conv exists only after folding). The depthwise conv also has its `group` attribute
# set to the kept count. Residual streams, the stem and shortcuts are never pruned.
COUPLING = {
    "basic": [("conv1.weight", 0), ("conv1.bias", 0), ("bn1.weight", 0), ("bn1.bias", 0),
              ("bn1.running_mean", 0), ("bn1.running_var", 0), ("conv2.weight", 1)],
    "inv": [("expand.weight", 0), ("expand.bias", 0), ("bn1.weight", 0), ("bn1.bias", 0),
            ("bn1.running_mean", 0), ("bn1.running_var", 0), ("dw.weight", 0), ("dw.bias", 0),
            ("bn2.weight", 0), ("bn2.bias", 0), ("bn2.running_mean", 0), ("bn2.running_var", 0),
            ("project.weight", 1)],
    "head": [("conv.weight", 0), ("conv.bias", 0), ("bn.weight", 0), ("bn.bias", 0),
             ("bn.running_mean", 0), ("bn.running_var", 0), ("fc.weight", 1)],
}
DEPTHWISE = {"inv": "dw.weight"}
MIN_SAMPLES = 1


NPY_MAGIC, ZIP_MAGIC = b"\x93NUMPY", b"PK"


def load_personal(path, input_name: str, sample_shape: tuple) -> np.ndarray:
    """Read personal samples from an .npz/.npy file and check them; returns float32 (N, *sample_shape)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"personal data file {p} does not exist", "pass an .npz with the samples under the input name")
    save_hint = f"save the samples with numpy: np.savez(f, {input_name}=x)"
    if p.is_dir():
        raise DataError(f"personal data {p} is a folder, not a file", save_hint)
    with open(p, "rb") as f:
        magic = f.read(len(NPY_MAGIC))
    if not (magic.startswith(NPY_MAGIC) or magic.startswith(ZIP_MAGIC)):
        raise DataError(f"personal data file {p} is not a NumPy .npz/.npy file" + (" (it is empty)" if not magic else ""),
                        save_hint)
    try:
        if magic.startswith(NPY_MAGIC):
            x = np.load(p, allow_pickle=False)
        else:
            with np.load(p, allow_pickle=False) as z:
                keys = list(z.keys())
                if not keys:
                    raise DataError(f"personal data file {p} is empty", save_hint)
                key = input_name if input_name in keys else (keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise DataError(f"{p} has arrays {keys} but none named {input_name!r}", save_hint)
                x = z[key]
    except DataError:
        raise
    except Exception as e:  # zipfile.BadZipFile, ValueError (object arrays), OSError, EOFError ...
        raise DataError(f"cannot read personal data {p}: {e}", save_hint + " (numbers only, no objects)") from None
    return check_personal(x, sample_shape, str(p))


def check_personal(x, sample_shape: tuple, where: str = "personal data") -> np.ndarray:
    """Personal samples -> float32 (N, *sample_shape). A single sample (no N axis) and, for
    one-channel inputs, (N, H, W) / (H, W) without the channel axis are accepted."""
    x = np.asarray(x)
    given = tuple(x.shape)
    if x.dtype.kind not in "fiu":
        raise DataError(f"{where}: dtype {x.dtype} is not numeric", "save float32 samples")
    if x.dtype.kind in "iu":
        raise DataError(f"{where}: samples are integers ({x.dtype}), which look like raw, unpreprocessed data",
                        "convert to float32 preprocessed as the model's metadata.preprocessing says "
                        "(`edgekit info BUNDLE` shows it)")
    sample_shape = tuple(int(d) for d in sample_shape)
    if len(sample_shape) > 1 and sample_shape[0] == 1 and tuple(x.shape[-len(sample_shape) + 1:]) == sample_shape[1:] \
            and x.ndim in (len(sample_shape) - 1, len(sample_shape)) and x.shape != sample_shape:
        x = x.reshape(-1, *sample_shape)  # (H, W) or (N, H, W) for a one-channel (1, H, W) input
    if x.shape == sample_shape:
        x = x[None]
    if x.ndim != len(sample_shape) + 1 or tuple(x.shape[1:]) != sample_shape:
        raise DataError(f"{where}: samples have shape {given}, the model needs (N, {', '.join(map(str, sample_shape))})",
                        "preprocess the samples as the manifest's metadata.preprocessing says")
    if x.shape[0] < MIN_SAMPLES:
        raise DataError(f"{where}: no samples (shape {given})", "give at least one personal sample")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{where}: contains NaN or infinite values", "clean the samples before personalizing")
    return x.astype(np.float32, copy=False)


def check_output(out, name: str | None) -> None:
    """Refuse an --out that is a file and a bundle name that is not a plain name (before any work)."""
    o = Path(out)
    if o.exists() and not o.is_dir():
        raise UsageError(f"--out {o} is a file, not a folder", "give a new or existing folder for the bundle")
    if name is not None and (not name.strip() or name in (".", "..") or Path(name).name != name or "\\" in name):
        raise UsageError(f"bundle name {name!r} is not a plain name", "use e.g. --name my-model (no / or ..)")


def prototype(probs: list[np.ndarray]) -> list[np.ndarray]:
    """Per unit, the mean over samples of the gate probabilities (float64 for a stable order)."""
    return [np.asarray(p, dtype=np.float64).mean(axis=0) for p in probs]


CHANNEL_MULTIPLE = 8  # kept counts are rounded up to a multiple of this (SIMD-friendly conv kernels)


def keep_masks(proto: list[np.ndarray], keep_ratio: float | None = None, threshold: float = 0.5,
               multiple: int = CHANNEL_MULTIPLE) -> list[np.ndarray]:
    """keep-ratio r: per unit the ceil(r*C) channels with the highest prototype value (ties -> lower
    index); otherwise channels whose prototype exceeds ``threshold``. The count is rounded up to a
    multiple of ``multiple`` (ONNX Runtime's blocked conv kernels want multiples of 8/16; odd counts
    can be slower than the unpruned layer) and is at least one."""
    if keep_ratio is not None and not (0.0 < keep_ratio <= 1.0):
        raise UsageError(f"keep ratio {keep_ratio} is outside (0, 1]", "use e.g. --keep-ratio 0.5")
    if keep_ratio is None and not (0.0 <= threshold < 1.0):
        raise UsageError(f"threshold {threshold} is outside [0, 1) (gate probabilities are in [0, 1])",
                         "use e.g. --threshold 0.5, or --keep-ratio")
    masks = []
    for p in proto:
        p = np.round(np.asarray(p, dtype=np.float64), 6)  # ORT vs torch float noise must not reorder
        c = p.shape[0]
        if keep_ratio is not None:
            k = max(1, min(c, int(math.ceil(keep_ratio * c - 1e-9))))
        else:
            k = max(1, int((p > threshold).sum()))
        if multiple > 1:
            k = min(c, int(math.ceil(k / multiple)) * multiple)
        order = np.lexsort((np.arange(c), -p))
        m = np.zeros(c, dtype=bool)
        m[order[:k]] = True
        masks.append(m)
    return masks
