"""Model states as plain numpy dictionaries (name -> array), and the checks every state the server
takes in or commits passes. numpy only: the server's bookkeeping, checkpoints and strategies use
these without torch.

Only floating-point entries are averaged or stepped; integer buffers (BatchNorm's
``num_batches_tracked``) are counters and stay the core's (:func:`merge_fixed`).
"""
from __future__ import annotations

import math

import numpy as np

State = dict[str, np.ndarray]

# A state's parameters may have at most this many times the root-mean-square of the initial model's
# (or 1, if that is smaller): honest training stays far below; 1e30-sized weights do not.
MAGNITUDE_LIMIT = 1000.0


def is_float(v) -> bool:
    return np.asarray(v).dtype.kind == "f"


def float_keys(state: State) -> list[str]:
    """The entries that are averaged: floating-point weights and buffers (BatchNorm running stats)."""
    return [k for k, v in state.items() if is_float(v)]


def merge_fixed(new: State, core: State) -> State:
    """``new``'s floating-point entries (in the core's dtypes) with the core's other entries: integer
    buffers such as BatchNorm's ``num_batches_tracked`` are counters, never averaged or stepped."""
    return {k: np.asarray(new[k]).astype(v.dtype, copy=False) if is_float(v) else v for k, v in core.items()}


def state_bytes(state: State) -> int:
    return int(sum(np.asarray(v).nbytes for v in state.values()))


def shape_mismatch(state: State, reference: State) -> str | None:
    """Why ``state`` cannot stand in for ``reference`` (keys, shapes, dtypes, finiteness)."""
    if set(state) != set(reference):
        missing = sorted(set(reference) - set(state))
        extra = sorted(set(state) - set(reference))
        return f"array keys differ (missing {missing[:3]}, unexpected {extra[:3]})"
    for k, ref in reference.items():
        v = np.asarray(state[k])
        if v.shape != ref.shape:
            return f"array {k!r} has shape {tuple(v.shape)}, expected {tuple(ref.shape)}"
        if v.dtype != ref.dtype:
            return f"array {k!r} has dtype {v.dtype}, expected {ref.dtype}"
        if not np.isfinite(v).all():
            return f"array {k!r} contains NaN or Inf"
    return None


def rms(state: State, keys) -> float:
    """Root-mean-square over the ``keys`` entries, in float64 (no overflow for float32 extremes)."""
    total, n = 0.0, 0
    for k in keys:
        v = np.asarray(state[k], np.float64)
        total += float(np.square(v).sum())
        n += v.size
    return math.sqrt(total / n) if n else 0.0


class MagnitudeCheck:
    """The bound on a state's parameters: RMS at most MAGNITUDE_LIMIT x max(1, the initial
    model's RMS). ``params`` are the trainable parameters' names (running statistics such as
    BatchNorm's variance follow the data's scale and are only checked for finiteness)."""

    def __init__(self, initial: State, params: list[str]):
        self.params = [k for k in params if k in initial and is_float(initial[k])]
        self.limit = MAGNITUDE_LIMIT * max(1.0, rms(initial, self.params))

    def problem(self, state: State) -> str | None:
        for k, v in state.items():
            if is_float(v) and not np.isfinite(v).all():
                return f"array {k!r} contains NaN or Inf"
        r = rms(state, self.params)
        if not r <= self.limit:
            return f"weights of size {r:.3g} (root-mean-square) exceed the limit {self.limit:.3g}"
        return None


def state_to_record(state: State):
    """A state as a Flower ArrayRecord (flwr is imported here: the rest of this module is numpy)."""
    from flwr.app import Array, ArrayRecord

    # np.asarray, not np.ascontiguousarray: that makes 0-d arrays (BatchNorm's num_batches_tracked) 1-d
    return ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in state.items()})


def record_to_state(record) -> State:
    return {k: arr.numpy() for k, arr in record.items()}


def record_bytes(content) -> int:
    """Bytes of the arrays in a Flower ``RecordDict`` (what a message carries over the wire)."""
    return int(sum(a.numpy().nbytes for rec in content.array_records.values() for a in rec.values()))
