"""Offline data for federated experiments: splits, Dirichlet non-IID partitions, validation.

Data sets (never downloaded at run time):
  digits         sklearn's bundled 8x8 digits (1797 images, 64 features) -- tests and CI
  fashion-mnist  Debian package ``dataset-fashion-mnist`` (/usr/share/datasets/fashion-mnist);
                 ``load_dataset("fashion-mnist")`` falls back to digits when it is absent.
  PATH.npz|.csv  the user's own file (:mod:`edgekit.federated.userdata`: formats, label mapping,
                 checks); referred to by its resolved absolute path.

Every data set is split once, deterministically from ``seed``, into disjoint parts:
  pool    the clients' private training data (partitioned by :func:`dirichlet_partition`)
  public  the server's *unlabeled* distillation split (labels are dropped by the server)
  val     a small labeled server validation set used only for teacher screening
  test    held-out accuracy for the curves
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from edgekit.data.fashion_mnist import read_idx
from edgekit.core.errors import DataError

from . import userdata

log = logging.getLogger("edgekit.federated")

FASHION_DIR = Path(os.environ.get("EDGEKIT_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
DATASETS = ("digits", "fashion-mnist")
MIN_PER_CLIENT = 4  # a simulation on a data file needs this many pool examples per client
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot")
FALLBACK_NOTE = (f"Fashion-MNIST not found in {FASHION_DIR}; falling back to digits "
                 "(apt-get install -y dataset-fashion-mnist, or set EDGEKIT_FASHION_MNIST)")


@dataclass(frozen=True)
class Splits:
    name: str
    n_classes: int
    in_dim: int
    pool_x: np.ndarray
    pool_y: np.ndarray
    public_x: np.ndarray  # unlabeled
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...] = ()  # class names, label i is classes[i]
    notes: tuple[str, ...] = ()  # warnings about the data (a user file's feature scale)


def fashion_available() -> bool:
    return (FASHION_DIR / "train-images-idx3-ubyte.gz").exists()


def _raw(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    if name == "digits":  # sklearn's bundled CSV, read without importing sklearn (fast start)
        import importlib.util

        spec = importlib.util.find_spec("sklearn")
        if spec is None or not spec.submodule_search_locations:
            raise DataError("the digits data set needs scikit-learn", 'pip install "edgekit[federated]"')
        csv = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
        d = np.loadtxt(csv, delimiter=",", dtype=np.float32)
        return d[:, :-1] / 16.0, d[:, -1].astype(np.int64), None, None
    if name == "fashion-mnist":
        try:
            tr_x = read_idx(FASHION_DIR / "train-images-idx3-ubyte.gz").reshape(-1, 784)
            tr_y = read_idx(FASHION_DIR / "train-labels-idx1-ubyte.gz")
            te_x = read_idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz").reshape(-1, 784)
            te_y = read_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz")
            if len(tr_x) != len(tr_y) or len(te_x) != len(te_y):
                raise ValueError("images and labels differ in number")
        except (OSError, EOFError, ValueError, IndexError) as err:  # missing, truncated or not IDX
            raise DataError(f"Fashion-MNIST in {FASHION_DIR} is incomplete or corrupt: {err}",
                            "reinstall dataset-fashion-mnist, or point EDGEKIT_FASHION_MNIST at a "
                            "directory with the four *-ubyte.gz files") from err
        f = lambda a: (a.astype(np.float32) / 255.0 - 0.2860) / 0.3530  # noqa: E731
        return f(tr_x), tr_y.astype(np.int64), f(te_x), te_y.astype(np.int64)
    raise DataError(f"unknown data set {name!r}", UNKNOWN_HINT)


UNKNOWN_HINT = f"use one of {', '.join(DATASETS)}, or the path of an .npz or .csv file"


def dataset_ref(name: str) -> str:
    """A built-in name unchanged, a data file as its resolved absolute path (the ServerApp and
    ClientApps run in other processes and working directories). Only the name is checked here."""
    if name in DATASETS:
        return name
    if userdata.looks_like_file(name):
        return userdata.absolute(name)
    raise DataError(f"unknown data set {name!r}", UNKNOWN_HINT)


def is_file_dataset(name: str) -> bool:
    return name not in DATASETS


def resolve_dataset(name: str) -> str:
    """Return the data set that will really be used (fashion-mnist falls back to digits)."""
    name = dataset_ref(name)
    if name == "fashion-mnist" and not fashion_available():
        log.warning(FALLBACK_NOTE)
        return "digits"
    return name


def load_dataset(name: str = "digits", seed: int = 0, pool_size: int | None = None) -> Splits:
    """Deterministic disjoint splits of a data set (see module doc). Cached; a data file is
    keyed by its absolute path, mtime and size, so an edited file is read again."""
    name = resolve_dataset(name)
    return _load_dataset(name, seed, pool_size, _stamp(name))


def _stamp(name: str) -> tuple[int, int] | None:
    return userdata.file_stamp(name) if is_file_dataset(name) else None


@lru_cache(maxsize=4)
def _load_dataset(name: str, seed: int, pool_size: int | None, stamp) -> Splits:
    if stamp is not None:
        d = userdata.read(name)
        for note in d["notes"]:
            log.warning(note)
        n_classes = len(d["classes"])
        sp = userdata.split(d["x"], d["y"], d["test_x"], d["test_y"], n_classes, seed)
        if pool_size is not None:
            sp["pool_x"], sp["pool_y"] = sp["pool_x"][:pool_size], sp["pool_y"][:pool_size]
        return Splits(name, n_classes, d["x"].shape[1], sp["pool_x"], sp["pool_y"], sp["public_x"], sp["val_x"],
                      sp["val_y"], sp["test_x"], sp["test_y"], classes=d["classes"], notes=d["notes"])
    x, y, te_x, te_y = _raw(name)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x))
    x, y = x[idx], y[idx]
    n = len(x)
    if te_x is None:  # digits: 20% test, 20% public, 6% val, rest pool
        n_test, n_pub, n_val = int(0.2 * n), int(0.2 * n), int(0.06 * n)
        test_x, test_y = x[:n_test], y[:n_test]
        rest_x, rest_y = x[n_test:], y[n_test:]
    else:  # fashion: 2000 of the official test set; from train 2000 public, 500 val, 12000 pool
        tsel = rng.permutation(len(te_x))[:2000]  # (subsets keep a 2-core machine's runs short)
        test_x, test_y = te_x[tsel], te_y[tsel]
        rest_x, rest_y = x, y
        n_pub, n_val = 2000, 500
        pool_size = pool_size or 12000
    pub_x = rest_x[:n_pub]
    val_x, val_y = rest_x[n_pub:n_pub + n_val], rest_y[n_pub:n_pub + n_val]
    pool_x, pool_y = rest_x[n_pub + n_val:], rest_y[n_pub + n_val:]
    if pool_size is not None:
        pool_x, pool_y = pool_x[:pool_size], pool_y[:pool_size]
    n_classes = int(y.max()) + 1
    classes = FASHION_CLASSES if name == "fashion-mnist" else tuple(str(c) for c in range(n_classes))
    return Splits(name, n_classes, x.shape[1], pool_x, pool_y, pub_x, val_x, val_y,
                  test_x, test_y, classes=classes)


def dirichlet_partition(labels: np.ndarray, num_partitions: int, alpha: float, seed: int,
                        min_size: int = 0, max_tries: int = 100) -> list[np.ndarray]:
    """Split indices non-IID: each class is spread over partitions with Dir(alpha) shares.

    Small alpha (0.1) gives a few classes per partition; large alpha (100) is nearly IID.
    With ``min_size`` > 0 the draw is repeated until every partition has that many samples.
    """
    if num_partitions < 1:
        raise DataError(f"num-partitions must be >= 1, got {num_partitions}")
    if not 0 < alpha < float("inf"):
        raise DataError(f"Dirichlet alpha must be > 0 and finite, got {alpha}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(num_partitions)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(num_partitions, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for p, chunk in enumerate(np.split(idx, cuts)):
                parts[p].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            break
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def validate_partition(x: np.ndarray, y: np.ndarray, in_dim: int, n_classes: int,
                       where: str = "partition") -> None:
    """Raise DataError naming what is wrong with a client's local data."""
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        raise DataError(f"{where}: data must be numpy arrays")
    if len(x) == 0:
        raise DataError(f"{where} is empty (0 examples)",
                        "give this node a non-empty partition or more data")
    if x.ndim != 2 or x.shape[1] != in_dim:
        raise DataError(f"{where}: features have shape {x.shape}, expected (N, {in_dim})",
                        "check the data set the node was configured with")
    if y.shape != (len(x),):
        raise DataError(f"{where}: {len(y)} labels for {len(x)} examples")
    if not np.issubdtype(x.dtype, np.floating) or not np.isfinite(x).all():
        raise DataError(f"{where}: features must be finite floats")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= n_classes:
        raise DataError(f"{where}: labels must be integers in [0, {n_classes})")


def load_node_file(data_path: str, in_dim: int, n_classes: int,
                   classes: tuple[str, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """A node's own .npz (x, y), validated against the data set's shape. Labels are integers in
    [0, n_classes) or, where the data set has class names, those names."""
    p = Path(data_path)
    if not p.exists():
        raise DataError(f"node data file {p} does not exist")
    try:
        with np.load(p, allow_pickle=False) as z:
            x, y = np.asarray(z["x"]), np.asarray(z["y"])
    except (KeyError, ValueError, OSError) as err:
        raise DataError(f"node data file {p} is malformed: {err}",
                        "write it with np.savez(path, x=features, y=labels)") from err
    if y.dtype.kind == "U" and y.ndim == 1 and classes:  # string labels: the data set's class names
        index = {c: i for i, c in enumerate(classes)}
        unknown = [str(v) for v in np.unique(y) if v not in index]
        if unknown:
            raise DataError(f"data file {p.name}: label {unknown[0]!r} is not a class of the data set",
                            f"use one of {', '.join(classes[:12])}")
        y = np.asarray([index[v] for v in y], dtype=np.int64)
    validate_partition(x, y, in_dim, n_classes, where=f"data file {p.name}")
    return x.astype(np.float32), y.astype(np.int64)


def load_partition(dataset: str, partition_id: int, num_partitions: int, alpha: float,
                   seed: int, data_path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The private data of one node, validated. ``data_path`` (an .npz with x, y) overrides."""
    s = load_dataset(dataset, seed)
    if data_path:
        return load_node_file(data_path, s.in_dim, s.n_classes, s.classes)
    if not (0 <= int(partition_id) < int(num_partitions)):
        raise DataError(f"partition-id {partition_id} is outside [0, {num_partitions})",
                        "start the node with --node-config 'partition-id=I num-partitions=N'")
    parts = partitions(s.name, seed, int(num_partitions), float(alpha))
    idx = parts[int(partition_id)]
    x, y = s.pool_x[idx], s.pool_y[idx]
    validate_partition(x, y, s.in_dim, s.n_classes, where=f"partition {partition_id}")
    return x, y


def partitions(name: str, seed: int, n: int, alpha: float) -> list[np.ndarray]:
    """The pool indices of each of ``n`` clients' partitions (cached; what the simulation uses)."""
    return _partitions_cached(name, seed, n, alpha, _stamp(name))


@lru_cache(maxsize=16)
def _partitions_cached(name: str, seed: int, n: int, alpha: float, stamp) -> list[np.ndarray]:
    s = load_dataset(name, seed)
    return dirichlet_partition(s.pool_y, n, alpha, seed, min_size=min(8, len(s.pool_y) // n))
