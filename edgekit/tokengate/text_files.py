"""Labelled text from the user's own files (CSV, TSV, JSON Lines or a JSON list), for
``edgekit tokengate train --data FILE``.

One file is split train/dev/test (80/10/10, stratified per label, fixed by ``seed``); a separate
dev file (``--dev FILE``) replaces the dev share (the rest is then 90/10 train/test). Labels may
be strings or integers; they are numbered in sorted order unless an order is given. Torch-free.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.core.errors import DataError

TEXT_KEYS = ("text", "sentence", "review", "content", "document", "utterance")
LABEL_KEYS = ("label", "labels", "category", "class", "target", "sentiment")


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise DataError(f"data file not found: {path}", "pass an existing .csv, .tsv, .jsonl or .json file")
    if not path.is_file():
        raise DataError(f"{path} is a directory, not a data file", "pass one .csv, .tsv, .jsonl or .json file")
    suf = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text", "save the file as UTF-8") from None
    # rows end at \n (or \r\n) only: str.splitlines() also splits at U+2028, U+0085, \x0b, \x1c..., which
    # users' texts contain (and json.dumps(ensure_ascii=False) writes raw), so a row broke in two
    if suf in (".csv", ".tsv", ".txt"):
        header = text.split("\n", 1)[0]
        # spreadsheet exports in many locales separate with ';' (or '|'): take the header's separator
        delim = "\t" if suf == ".tsv" else max(("," if suf == ".csv" else "\t", ",", ";", "\t", "|"),
                                               key=header.count)
        return list(csv.DictReader(io.StringIO(text, newline=""), delimiter=delim))
    if suf == ".jsonl":
        out = []
        for i, line in enumerate(text.split("\n")):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{i + 1} is not valid JSON ({e.msg})", "one JSON object per line") from None
        return out
    if suf == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})", "fix the file") from None
        if isinstance(data, dict):   # {"text": [...], "label": [...]} columns
            keys = list(data)
            if not all(isinstance(data[k], list) for k in keys):
                raise DataError(f"{path}: expected a list of records or a dict of equal-length lists",
                                'e.g. [{"text": "...", "label": "pos"}, ...]')
            n = len(data[keys[0]]) if keys else 0
            return [{k: data[k][i] for k in keys} for i in range(n)]
        if isinstance(data, list):
            return data
        raise DataError(f"{path}: expected a list of records", 'e.g. [{"text": "...", "label": "pos"}, ...]')
    raise DataError(f"unsupported data file type {suf or '(none)'!r}: {path}", "use .csv, .tsv, .jsonl or .json")


def _pick(keys: list[str], wanted: str | None, defaults: tuple[str, ...], what: str, path: Path) -> str:
    if wanted:
        if wanted not in keys:
            raise DataError(f"{path} has no {what} column {wanted!r} (columns: {keys})",
                            f"pass --{what}-column with one of {keys}")
        return wanted
    low = {k.lower(): k for k in keys}
    for d in defaults:
        if d in low:
            return low[d]
    raise DataError(f"cannot tell which column of {path} holds the {what} (columns: {keys})",
                    f"pass --{what}-column NAME")


def read_labelled(path: str | Path, text_column: str | None = None,
                  label_column: str | None = None) -> tuple[list[str], list[str]]:
    """(texts, labels as strings) of every row; rows with an empty text or label are errors."""
    path = Path(path)
    rows = _rows(path)
    if not rows:
        raise DataError(f"{path} holds no rows", "add labelled examples")
    if not all(isinstance(r, dict) for r in rows):
        raise DataError(f"{path}: every record must be an object with a text and a label", "fix the file")
    keys = list(rows[0].keys())
    tc = _pick(keys, text_column, TEXT_KEYS, "text", path)
    lc = _pick(keys, label_column, LABEL_KEYS, "label", path)
    texts, labels = [], []
    for i, r in enumerate(rows):
        t, y = r.get(tc), r.get(lc)
        if not isinstance(t, str) or not t.strip():
            raise DataError(f"{path}: row {i + 1} has an empty or missing {tc!r}", "drop or fill that row")
        if isinstance(y, float) and y.is_integer():
            y = int(y)
        if y is None or isinstance(y, (list, dict, float)) or (isinstance(y, str) and not y.strip()):
            raise DataError(f"{path}: row {i + 1} has label {y!r}; labels must be one class name or integer",
                            "one label per row (single-label classification)")
        texts.append(t)
        labels.append(str(y).strip())
    return texts, labels


def _stratified(y: np.ndarray, shares: tuple[float, ...], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in shares]
    for c in np.unique(y):
        idx = rng.permutation(np.nonzero(y == c)[0])
        cuts = np.round(np.cumsum(shares)[:-1] * len(idx)).astype(int)
        for p, chunk in zip(parts, np.split(idx, cuts)):
            p += chunk.tolist()
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def load_text_dataset(path: str | Path, dev_path: str | Path | None = None, *, text_column: str | None = None,
                      label_column: str | None = None, seed: int = 0,
                      label_order: list[str] | None = None) -> dict[str, Any]:
    """{"train"/"dev"/"test": (texts, int64 labels), "labels": names, "source": {...}}."""
    texts, labels = read_labelled(path, text_column, label_column)
    names = sorted(set(labels), key=lambda s: (not s.lstrip("-").isdigit(), int(s) if s.lstrip("-").isdigit() else 0, s))
    if label_order is not None:
        if set(label_order) != set(labels):
            raise DataError(f"label order {label_order} does not match the labels in {path}: {names}",
                            "use the data's labels")
        names = list(label_order)
    if len(names) < 2:
        raise DataError(f"{path} has a single label {names}; classification needs at least 2",
                        "add examples of the other classes")
    lid = {n: i for i, n in enumerate(names)}
    y = np.array([lid[s] for s in labels], dtype=np.int64)
    if dev_path is not None:
        dt, dl = read_labelled(dev_path, text_column, label_column)
        unknown = sorted(set(dl) - set(names))
        if unknown:
            raise DataError(f"{dev_path} has labels {unknown} that are not in {path}", "use the same label set")
        tr, te = _stratified(y, (0.9, 0.1), seed)
        dev = (dt, np.array([lid[s] for s in dl], dtype=np.int64))
    else:
        tr, dv, te = _stratified(y, (0.8, 0.1, 0.1), seed)
        dev = ([texts[i] for i in dv], y[dv])
    if len(tr) < 2 or len(dev[0]) < 1:
        raise DataError(f"{path} has too few rows ({len(texts)}) for a train/dev split",
                        "give at least a few dozen labelled examples")
    out = {"train": ([texts[i] for i in tr], y[tr]), "dev": dev,
           "test": ([texts[i] for i in te], y[te]), "labels": names,
           "source": {"data": str(path), "dev": str(dev_path) if dev_path else None, "split_seed": seed,
                      "rows": len(texts), "sizes": {"train": len(tr), "dev": len(dev[0]), "test": len(te)}}}
    return out
