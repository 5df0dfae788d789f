"""The simulated nodes: speed (seconds per training example, log-normal across nodes), link
bandwidth, online sessions (churn: exponential on/off periods; some nodes only join later) and,
for robustness runs, an attack. The same seed gives the same nodes with or without attackers."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..client import ATTACKS


@dataclass
class NodeProfile:
    node_id: int
    partition_id: int
    sec_per_example: float
    bandwidth: float  # bytes per virtual second
    sessions: list[tuple[float, float]]  # online [start, end) intervals
    attack: str = ""
    node_config: dict = field(default_factory=dict)

    def online(self, t: float) -> bool:
        return any(a <= t < b for a, b in self.sessions)

    def session_end(self, t: float) -> float | None:
        for a, b in self.sessions:
            if a <= t < b:
                return b
        return None


def churn_means(horizon: float, mean_on: float | None = None,
                mean_off: float | None = None) -> tuple[float, float]:
    """Mean online and offline periods (virtual units); defaults horizon/4 and horizon/12."""
    return mean_on or horizon / 4, mean_off or horizon / 12


def base_sec_per_example(pool: int, clients: int) -> float:
    """The time unit: a median-speed node needs 10 units for one epoch on an average partition."""
    return 10.0 / max(1.0, pool / clients)


def make_profiles(n: int, *, seed: int, horizon: float, malicious: float = 0.0,
                  speed_sigma: float = 1.0, sec_per_example: float = 0.2,
                  bandwidth: float = 2e5, mean_on: float | None = None,
                  mean_off: float | None = None, late_fraction: float = 0.2,
                  churn: bool = True) -> list[NodeProfile]:
    """Heterogeneous nodes: log-normal speed and bandwidth, exponential on/off churn."""
    rng = np.random.default_rng(seed + 7919)
    mean_on, mean_off = churn_means(horizon, mean_on, mean_off)
    # a separate stream: the same seed gives the same speeds and churn with or without attackers
    pick = np.random.default_rng(seed + 104729)
    bad = set(pick.choice(n, size=int(round(malicious * n)), replace=False).tolist()) if malicious else set()
    profiles = []
    for i in range(n):
        if churn:
            t = float(rng.uniform(0, horizon / 2)) if rng.random() < late_fraction else 0.0
            sessions = []
            while t < horizon * 2:
                on = float(rng.exponential(mean_on))
                sessions.append((t, t + on))
                t += on + float(rng.exponential(mean_off))
        else:
            sessions = [(0.0, float("inf"))]
        attack = ATTACKS[sorted(bad).index(i) % len(ATTACKS)] if i in bad else ""
        profiles.append(NodeProfile(
            node_id=1000 + i, partition_id=i,
            sec_per_example=sec_per_example * float(rng.lognormal(0.0, speed_sigma)),
            bandwidth=bandwidth * float(rng.lognormal(0.0, 0.5)), sessions=sessions, attack=attack,
            node_config={"partition-id": i, "num-partitions": n, **({"attack": attack} if attack else {})}))
    return profiles
