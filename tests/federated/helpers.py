"""Shared helpers of the federated tests (not tests themselves)."""
from __future__ import annotations

import json
from dataclasses import fields

from tests.conftest import assert_user_error


def cloned(d, *, model=("mlp", 64, 10), seed: int = 0, batch_size: int = 32, max_staleness: int = 20, **settings):
    """A ClonedDistillation on the data set splits ``d`` with ``settings`` (ClonedConfig fields; ``epochs``
    and ``lr`` are the distillation's, as distill_epochs / distill_lr)."""
    from edgekit.federated.models import build_model
    from edgekit.federated.strategies import ServerContext
    from edgekit.federated.strategies.cloned import ClonedConfig, ClonedDistillation

    settings = {{"epochs": "distill_epochs", "lr": "distill_lr"}.get(k, k): v for k, v in settings.items()}
    unknown = set(settings) - {f.name for f in fields(ClonedConfig)}
    assert not unknown, unknown
    ctx = ServerContext(lambda: build_model(*model), d.public_x, d.val_x, d.val_y, model[2], seed=seed,
                        batch_size=batch_size, max_staleness=max_staleness)
    return ClonedDistillation(ClonedConfig(**settings), ctx)


def user_error(res, *needles: str) -> None:
    """A CLI result that is one user error (see tests.conftest.assert_user_error)."""
    _stop_started_node(res)
    assert_user_error(res, *needles)


def _stop_started_node(res) -> None:
    """If a regression let `client --json` start a SuperNode, stop its process group."""
    import os
    import signal

    try:
        pid = int(json.loads(res.stdout)["pid"])
    except (ValueError, KeyError, TypeError):
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
