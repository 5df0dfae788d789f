"""FedBuff (Nguyen et al. 2022): a staleness-weighted average of K buffered deltas.

    w <- w + eta * mean_i s(tau_i) * (w_i - w_base_i)
"""
from __future__ import annotations

from dataclasses import dataclass

from ..state import State, float_keys, merge_fixed
from .base import BufferedConfig, Strategy, Update, delta, staleness_weight


@dataclass
class FedBuffConfig(BufferedConfig):
    """FedBuff has only the buffered strategies' settings."""


class FedBuff(Strategy):
    name = "fedbuff"
    Config = FedBuffConfig

    def add(self, update: Update, history: dict[int, State]) -> None:
        d = delta(update, history)
        self.buffer.append(Update(update.node_id, update.base_version, update.num_examples, d,
                                  update.arrived, update.metrics))

    def aggregate(self, core: State, version: int) -> tuple[State, dict]:
        c = self.config
        s = [staleness_weight(version - u.base_version, c.staleness) for u in self.buffer]
        step = {k: sum(si * u.state[k] for si, u in zip(s, self.buffer)) / len(self.buffer)
                for k in float_keys(core)}
        new = merge_fixed({k: core[k] + c.server_lr * step[k] for k in step}, core)
        info = {"used": len(self.buffer), "dropped": 0}
        self.buffer = []
        return new, info
