"""Server-side strategies, one per file over a small base (base.py):

    fedbuff.py    FedBuff: a staleness-weighted average of K buffered deltas
    cloned.py     buffered cloned distillation (screening.py, distill.py)
    fedavg.py     Flower's own FedAvg, the synchronous baseline (driven by server/fedavg.py)

Each has its own config dataclass; :data:`CONFIGS` maps a method to it. Importing this package
imports neither torch nor flwr.
"""
from __future__ import annotations

from .base import ServerContext, Strategy
from .cloned import ClonedConfig, ClonedDistillation
from .fedavg import FedAvgConfig
from .fedbuff import FedBuff, FedBuffConfig

ASYNC = {"cloned": ClonedDistillation, "fedbuff": FedBuff}
CONFIGS = {"cloned": ClonedConfig, "fedbuff": FedBuffConfig, "fedavg": FedAvgConfig}


def make_strategy(method: str, config, ctx: ServerContext) -> Strategy:
    """The asynchronous strategy of ``method`` with its ``config`` (a CONFIGS[method] instance)."""
    if method not in ASYNC:
        raise ValueError(f"unknown asynchronous method {method!r}")
    return ASYNC[method](config, ctx)
