"""Flower's own FedAvg, the synchronous baseline in the same harness: its settings, and the
strategy with every reply validated (server/messages.py) before Flower aggregates, so one bad
client cannot crash a round. The round loop is server/fedavg.py. flwr is imported when used."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from ..settings import setting, unit, validate

log = logging.getLogger("edgekit.federated")


@dataclass
class FedAvgConfig:
    fedavg_ema: float = setting(0.0, "FedAvg: serve (and evaluate) an EMA of the rounds' models (0: the latest)",
                                check=unit(closed=False))

    def __post_init__(self) -> None:
        validate(self)


def flower_fedavg(check):
    """Flower's FedAvg (flwr.serverapp.strategy) that drops the replies ``check(reply)`` finds a
    problem with (the reason logged) before Flower aggregates."""
    from flwr.serverapp.strategy import FedAvg

    class CheckedFedAvg(FedAvg):
        def aggregate_train(self, server_round, replies):
            good = []
            for m in replies:
                if not m.has_error():
                    why = check(m)
                    if why:
                        log.warning("fedavg: rejected reply from node %s: %s", m.metadata.src_node_id, why)
                        continue
                good.append(m)
            return super().aggregate_train(server_round, good)

    return CheckedFedAvg(fraction_evaluate=0.0, min_available_nodes=1, min_train_nodes=1)
