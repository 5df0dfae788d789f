"""The strategy base: a buffer of accepted updates, and the five calls the server loop makes.

    add(update, history)   take an accepted update into the buffer (raise Rejected if unusable)
    ready(now)             is there something to aggregate (K buffered, or max-wait passed)?
    aggregate(core, v)     the next core model and a dict of counters
    state_dict()           everything the strategy must keep across a restart
    load_state_dict(st)    restore it (raises ValueError/KeyError/TypeError on a malformed state;
                           with ``reference``, the core model, every array is checked against it)

A state dict is flat: keys are strings; values are numpy arrays (written as arrays in the
checkpoint) or JSON values (written into its header). numpy only; no torch, no flwr.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from ..settings import at_least, non_negative, positive, setting, validate
from ..state import State, float_keys, shape_mismatch

STALENESS = ("sqrt", "none")


@dataclass
class Update:
    node_id: int
    base_version: int
    num_examples: int
    state: State  # full clone (distillation) or delta (FedBuff)
    arrived: float = 0.0
    metrics: dict = field(default_factory=dict)

    def meta(self) -> dict:
        d = asdict(self)
        d.pop("state")
        return d


class Rejected(Exception):
    """An update that cannot be used; the message is the logged reason."""


def staleness_weight(tau: int, kind: str = "sqrt") -> float:
    """FedBuff / FedAsync staleness discount s(tau); tau = core version - base version."""
    tau = max(0, int(tau))
    if kind == "sqrt":
        return 1.0 / math.sqrt(1.0 + tau)
    if kind == "none":
        return 1.0
    raise ValueError(f"unknown staleness kind {kind!r}")


@dataclass
class BufferedConfig:
    """Settings of every buffered asynchronous strategy."""

    buffer_size: int = setting(5, "K: updates (teachers or deltas) per core update", check=at_least(1))
    server_lr: float = setting(1.0, "server step on the buffered (weighted mean) update", check=positive("> 0"))
    staleness: str = setting("sqrt", "staleness discount s(tau) = 1/sqrt(1+tau) | none", choices=STALENESS)
    max_wait: float = setting(0.0, "aggregate a partial buffer after this many seconds (0: never)",
                              check=non_negative(" (0: never)"))

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class ServerContext:
    """What the server knows that a strategy may use: the model and the server's own data."""

    model_fn: Callable  # () -> a fresh torch model of the run's architecture
    public_x: np.ndarray  # the unlabeled distillation split
    val_x: np.ndarray  # the small labeled validation split
    val_y: np.ndarray
    n_classes: int
    seed: int = 0
    batch_size: int = 32  # the clients' SGD batch (their local steps per update)
    max_staleness: int = 20


class Strategy:
    """A buffered asynchronous strategy (subclasses: FedBuff, ClonedDistillation)."""

    name = "base"
    Config = BufferedConfig

    def __init__(self, config: BufferedConfig, ctx: ServerContext | None = None):
        self.config, self.ctx = config, ctx
        self.buffer: list[Update] = []

    def add(self, update: Update, history: dict[int, State]) -> None:
        self.buffer.append(update)

    def ready(self, now: float) -> bool:
        if len(self.buffer) >= self.config.buffer_size:
            return True
        wait = self.config.max_wait
        return bool(self.buffer) and wait > 0 and now - self.buffer[0].arrived >= wait

    def aggregate(self, core: State, version: int) -> tuple[State, dict]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        out: dict = {"buffer": [u.meta() for u in self.buffer]}
        for i, u in enumerate(self.buffer):
            out.update({f"buffer/{i}/{k}": v for k, v in u.state.items()})
        return out

    def load_state_dict(self, state: dict, reference: State | None = None) -> None:
        metas = state["buffer"]
        if not isinstance(metas, list):
            raise ValueError("'buffer' is not a list")
        buffer = [Update(state=nested(state, f"buffer/{i}/"), **m) for i, m in enumerate(metas)]
        if reference is not None:
            for i, u in enumerate(buffer):
                check_arrays(f"buffered update {i}", u.state, self.buffered_arrays(reference))
        self.buffer = buffer

    def buffered_arrays(self, core: State) -> State:
        """What a buffered update holds, as reference arrays (here: a delta of the float entries)."""
        return {k: core[k] for k in float_keys(core)}


def check_arrays(what: str, arrays: State, reference: State) -> None:
    """ValueError unless ``arrays`` has exactly the keys, shapes and dtypes of ``reference``, finite."""
    why = shape_mismatch(arrays, reference)
    if why is not None:
        raise ValueError(f"{what}: {why}")


def nested(state: dict, prefix: str) -> State:
    """The arrays of ``state`` under ``prefix`` (the prefix removed)."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def delta(update: Update, history: dict[int, State]) -> State:
    """``update.state - base`` for the floating-point entries; Rejected if the base is no longer kept."""
    base = history.get(update.base_version)
    if base is None:
        raise Rejected(f"base version {update.base_version} is no longer kept (too stale)")
    return {k: (update.state[k] - base[k]).astype(base[k].dtype) for k in float_keys(base)}
