"""The user's own data set for federated runs: ``--dataset PATH`` to an .npz or a .csv file.

Formats
  .npz  arrays ``x`` (N, ...) features (any shape; flattened to (N, D) float32) and ``y`` (N,)
        integer or string labels; optionally ``x_test`` / ``y_test``, a held-out test set.
  .csv  a header row, numeric feature columns and one label column: the first column named
        label / y / target / class (any case), else the last column.

Labels (strings or arbitrary integers) become 0..C-1 in sorted order of the unique training
labels; the class names are kept for the result. Features are *not* standardised: statistics
over the whole file are something no real server could compute from private client data. A
file whose features reach |x| > 1e3 gets a warning to scale them.

The splits are made by :func:`split`, deterministically from the seed, like digits': test
(``x_test`` if given, else 20 %), public unlabeled 20 % (at most 2,000), validation 6 % (at least
20 and one example of every class that has two or more, at most 500), the rest is the client pool.

Every problem is one :class:`DataError` naming the file and the fix. numpy only (no torch).
"""
from __future__ import annotations

import csv
import os
import zipfile
from pathlib import Path

import numpy as np

from edgekit.core.errors import DataError

SUFFIXES = (".npz", ".csv")
LABEL_COLUMNS = ("label", "y", "target", "class")
MIN_EXAMPLES = 50
SCALE_WARN = 1e3
MAX_PUBLIC, MAX_VAL, MIN_VAL = 2000, 500, 20
NPZ_HINT = "write it with np.savez(path, x=features, y=labels[, x_test=..., y_test=...])"
CSV_HINT = ("a header row, numeric feature columns and a label column named label, y, target or "
            "class (else the last column)")


def looks_like_file(name: str) -> bool:
    """A --dataset value that is not a built-in name is a file if it has a suffix or a directory
    part, or exists ("cifar" is an unknown name, "cifar.txt" a file of the wrong kind)."""
    p = Path(name)
    return bool(p.suffix) or os.sep in name or "/" in name or p.exists()


def absolute(name: str) -> str:
    """The resolved absolute path (the ServerApp and ClientApps run in other working directories)."""
    return str(Path(name).expanduser().resolve())


def file_stamp(path: str) -> tuple[int, int]:
    """(mtime_ns, size) of a usable data file, so a cache re-reads an edited file."""
    p = Path(path)
    if p.suffix.lower() not in SUFFIXES:
        raise DataError(f"data set file {p}: unsupported format {p.suffix or '(no extension)'!r}",
                        "give an .npz (arrays x, y) or a .csv file, or one of the built-in names")
    if not p.is_file():
        what = "does not exist" if not p.exists() else "is not a file"
        raise DataError(f"data set file {p} {what}", "check the path given to --dataset")
    st = p.stat()
    return st.st_mtime_ns, st.st_size


def read(path: str) -> dict:
    """Read and check a data file: x, y (0..C-1), x_test/y_test (or None), classes, notes."""
    p = Path(path)
    file_stamp(path)
    x, y, te_x, te_y = _read_npz(p) if p.suffix.lower() == ".npz" else _read_csv(p)
    where = f"data set file {p}"
    x = _features(x, f"{where}: x")
    y = _labels(y, len(x), f"{where}: y")
    if te_x is not None:
        te_x = _features(te_x, f"{where}: x_test")
        te_y = _labels(te_y, len(te_x), f"{where}: y_test")
        if te_x.shape[1] != x.shape[1]:
            raise DataError(f"{where}: x_test has {te_x.shape[1]} features per example, x has {x.shape[1]}",
                            "x_test must be shaped like x")
    classes = np.unique(y)
    if len(classes) < 2:
        raise DataError(f"{where}: y has a single class ({_name(classes[0])!r})",
                        "a classifier needs examples of at least two classes")
    if len(x) < MIN_EXAMPLES:
        raise DataError(f"{where}: only {len(x)} examples; at least {MIN_EXAMPLES} are needed for the "
                        "test, public, validation and client splits", "add more data")
    if te_y is not None:
        if len(te_x) == 0:
            raise DataError(f"{where}: x_test is empty", "drop x_test/y_test (20 % of x is then the test set)")
        if (te_y.dtype.kind in "US") != (y.dtype.kind in "US"):
            raise DataError(f"{where}: y holds {_kind(y)} labels but y_test {_kind(te_y)} labels",
                            "use the same label type in both")
        unknown = np.setdiff1d(np.unique(te_y), classes)
        if len(unknown):
            raise DataError(f"{where}: y_test has labels not in y: {[_name(c) for c in unknown[:5]]}",
                            "every test class must appear in the training data")
        te_y = np.searchsorted(classes, te_y).astype(np.int64)
    notes = []
    scale = max(float(np.abs(x).max()), float(np.abs(te_x).max()) if te_x is not None else 0.0)
    if scale > SCALE_WARN:
        notes.append(f"{where}: features reach |x| = {scale:.3g}; scale them (e.g. to [0, 1]) before "
                     "training, edgekit does not standardise user data")
    return {"x": x, "y": np.searchsorted(classes, y).astype(np.int64), "test_x": te_x, "test_y": te_y,
            "classes": tuple(_name(c) for c in classes), "notes": tuple(notes)}


def split(x: np.ndarray, y: np.ndarray, test_x, test_y, n_classes: int, seed: int) -> dict:
    """Disjoint test / public / val / pool splits (see the module doc)."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x))
    x, y = x[idx], y[idx]
    n = len(x)
    if test_x is None:
        n_test = int(0.2 * n)
        test_x, test_y, x, y = x[:n_test], y[:n_test], x[n_test:], y[n_test:]
    n_pub = min(MAX_PUBLIC, int(0.2 * n))
    pub_x, x, y = x[:n_pub], x[n_pub:], y[n_pub:]
    n_val = min(MAX_VAL, max(MIN_VAL, int(0.06 * n)))
    # one example of every class that has two or more left (the other stays with the clients)
    firsts = [int(np.flatnonzero(y == c)[0]) for c in range(n_classes) if (y == c).sum() >= 2]
    take = np.zeros(len(y), bool)
    take[firsts] = True
    take[np.flatnonzero(~take)[:max(0, n_val - len(firsts))]] = True
    return {"public_x": pub_x, "val_x": x[take], "val_y": y[take], "pool_x": x[~take], "pool_y": y[~take],
            "test_x": test_x, "test_y": test_y}


# readers --------------------------------------------------------------------------------------
def _read_npz(p: Path):
    try:
        z = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"data set file {p} is not a readable .npz archive: {err}", NPZ_HINT) from err
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataError(f"data set file {p} holds a single array, not an .npz archive with x and y", NPZ_HINT)
    with z:
        for key in ("x", "y"):
            if key not in z.files:
                raise DataError(f"data set file {p} has no array {key!r} (it has: {', '.join(z.files) or 'none'})",
                                NPZ_HINT)
        if ("x_test" in z.files) != ("y_test" in z.files):
            raise DataError(f"data set file {p} has only one of x_test / y_test", "give both or neither")
        try:
            arrays = {k: np.asarray(z[k]) for k in ("x", "y", "x_test", "y_test") if k in z.files}
        except (ValueError, OSError, zipfile.BadZipFile) as err:  # object arrays need pickle: refused
            raise DataError(f"data set file {p}: an array cannot be read ({err})",
                            "save labels as a str or int array, not dtype=object") from err
    return arrays["x"], arrays["y"], arrays.get("x_test"), arrays.get("y_test")


def _read_csv(p: Path):
    try:
        with open(p, newline="", encoding="utf-8-sig") as fh:
            rows = [(i, r) for i, r in enumerate(csv.reader(fh), start=1) if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"data set file {p} cannot be read as CSV: {err}", CSV_HINT) from err
    if len(rows) < 2:
        raise DataError(f"data set file {p} has no data rows", CSV_HINT)
    header = [h.strip() for h in rows[0][1]]
    if len(header) < 2:
        raise DataError(f"data set file {p}: needs a feature column and a label column, the header has "
                        f"{len(header)} column", CSV_HINT)
    if all(_is_number(h) for h in header):
        raise DataError(f"data set file {p}: the first row is numbers, not a header row", CSV_HINT)
    low = [h.lower() for h in header]
    li = next((low.index(c) for c in LABEL_COLUMNS if c in low), len(header) - 1)
    for line, r in rows[1:]:
        if len(r) != len(header):
            raise DataError(f"data set file {p}, line {line}: {len(r)} fields, the header has {len(header)}",
                            "every row needs a value for every column")
    cells = np.array([r for _, r in rows[1:]], dtype=str)
    feats = np.delete(cells, li, axis=1)
    try:
        x = np.char.strip(feats).astype(np.float64)
    except ValueError:
        line, r, j = next(((line, r, j) for line, r in rows[1:] for j in range(len(header))
                           if j != li and not _is_number(r[j])), (rows[1][0], rows[1][1], 0))
        raise DataError(f"data set file {p}, line {line}, column {header[j]!r}: {r[j]!r} is not a number",
                        "feature columns must be numeric (encode categories as numbers)") from None
    labels = np.char.strip(cells[:, li])
    if all(_is_number(v) for v in labels):
        labels = labels.astype(np.float64)  # integers (checked in _labels) sort as numbers, not text
    return x, labels, None, None


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


# checks ---------------------------------------------------------------------------------------
def _features(x: np.ndarray, where: str) -> np.ndarray:
    if x.ndim == 0 or x.dtype.kind not in "biuf":
        raise DataError(f"{where} must be a numeric array (N, ...), got dtype {x.dtype} shape {x.shape}",
                        "store features as numbers")
    out = x.reshape(len(x), -1).astype(np.float32)
    if out.shape[1] == 0:
        raise DataError(f"{where} has no features (shape {x.shape})")
    bad = ~np.isfinite(out)
    if bad.any():
        row = int(np.flatnonzero(bad.any(axis=1))[0])
        raise DataError(f"{where} has {int(bad.sum())} non-finite values (NaN/Inf or beyond float32), first in "
                        f"row {row}", "impute or drop those rows, and scale huge values")
    return out


def _labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{where} must be one label per example (N,), got shape {y.shape}",
                        "one-hot labels: use y.argmax(1)")
    if len(y) != n:
        raise DataError(f"{where}: {len(y)} labels for {n} examples", "x and its labels must have the same length")
    if y.dtype.kind == "S":
        y = y.astype(str)
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or (y != np.round(y)).any():
            raise DataError(f"{where} holds non-integer numbers (e.g. {y[np.flatnonzero(y != np.round(y))[:1]]})",
                            "labels must be classes: integers or strings")
        y = y.astype(np.int64)
    if y.dtype.kind not in "biuU":
        raise DataError(f"{where} has dtype {y.dtype}", "labels must be integers or strings")
    return y


def _name(c) -> str:
    return str(c.item() if hasattr(c, "item") else c)


def _kind(y: np.ndarray) -> str:
    return "string" if y.dtype.kind in "US" else "integer"
