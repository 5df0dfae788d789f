"""Virtual-clock simulation: the real server loop and ClientApp on a Flower ``Grid`` whose time is
simulated (grid.py), with heterogeneous nodes (nodes.py), so results do not depend on the
machine's speed or load and the same seed gives the same curve.

    from edgekit.federated.sim import simulate
    result = simulate("cloned", clients=20, malicious=0.2, seed=1, horizon=1500, epochs=1)

:class:`SimConfig` holds the simulation's own settings (its defaults are ``edgekit federated
simulate``'s); every other keyword is a run setting (config.FedConfig). Importing this package
imports neither torch nor flwr; :func:`simulate` does.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields
from typing import Optional

from edgekit.core.errors import DataError, UsageError

from ..config import FedConfig
from ..data import MIN_PER_CLIENT, is_file_dataset, load_dataset, resolve_dataset
from ..settings import setting

log = logging.getLogger("edgekit.federated")


@dataclass
class SimConfig:
    """The simulated federation (the run settings are FedConfig's)."""

    clients: int = setting(20, "number of simulated nodes")
    malicious: float = setting(0.0, "fraction of malicious nodes (label-flip, random-weights, scaled in turn)")
    horizon: float = setting(1500.0, "virtual time budget (a median node needs 10 units per epoch)")
    churn: bool = setting(True, "nodes go offline and online (exponential periods); 20% join late")
    speed_sigma: float = setting(1.0, "spread of node speeds: log-normal sigma of seconds per example (0: equal)")
    mean_on: Optional[float] = setting(None, "churn: mean online period (default horizon/4)")
    mean_off: Optional[float] = setting(None, "churn: mean offline period (default horizon/12)")

    def __post_init__(self) -> None:
        check_simulation(self.clients, self.malicious, self.horizon)
        if not 0.0 <= self.speed_sigma < math.inf:
            raise UsageError(f"--speed-sigma must be >= 0 and finite, got {self.speed_sigma}",
                             "e.g. 1.0 (the benchmark's)")
        for name in ("mean_on", "mean_off"):
            v = getattr(self, name)
            if v is not None and not 0.0 < v < math.inf:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive number of virtual time units, got {v}")


def check_simulation(clients: int, malicious: float, horizon: float) -> None:
    """Raise UsageError for settings no simulation can run with."""
    if clients < 1:
        raise UsageError(f"--clients must be >= 1, got {clients}")
    if not 0.0 <= malicious < 1.0:
        raise UsageError(f"--malicious must be in [0, 1), got {malicious}")
    if round(malicious * clients) >= clients:
        raise UsageError(f"--malicious {malicious} makes all {clients} nodes malicious",
                         f"use a fraction below {(clients - 0.5) / clients:.3g} or more --clients")
    if not 0.0 < horizon < math.inf:
        raise UsageError(f"--horizon must be a positive number of virtual time units, got {horizon}",
                         "e.g. --horizon 1500 (a median node needs 10 units per epoch)")


def simulate(method: str = "cloned", progress=None, **settings) -> dict:
    """Run one method under the virtual clock and return the server's result (with its curve).

    ``settings``: SimConfig's fields (clients, malicious, horizon, churn, speed_sigma, mean_on,
    mean_off) and any run setting (seed, dataset, epochs, ...). Churn: a node's online and
    offline periods are exponential with means ``mean_on`` and ``mean_off`` virtual units
    (default horizon/4 and horizon/12; a median node needs 10 units per local epoch).
    ``progress``: a callable given one line per curve point (virtual time, core version, accuracy)."""
    names = {f.name for f in fields(SimConfig)}
    sim = SimConfig(**{k: v for k, v in settings.items() if k in names})
    overrides = {k: v for k, v in settings.items() if k not in names}
    import torch

    from ..models import check_run
    from ..server.loop import AsyncServer
    from .grid import VirtualGrid
    from .nodes import base_sec_per_example, churn_means, make_profiles

    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.WARNING)  # FedAvg logs every round at INFO
    dataset = resolve_dataset(overrides.pop("dataset", "digits"))
    cfg = FedConfig(**{"method": method, "dataset": dataset, "num_partitions": sim.clients, "max_time": sim.horizon,
                       "max_versions": 10**9, "poll": 1.0, "deadline": sim.horizon / 20, **overrides})
    pool = len(load_dataset(dataset, cfg.seed).pool_y)
    if is_file_dataset(dataset) and pool < MIN_PER_CLIENT * sim.clients:
        raise DataError(f"data set file {dataset}: its client pool has {pool} examples, fewer than "
                        f"{MIN_PER_CLIENT} for each of {sim.clients} clients",
                        f"use at most {max(1, pool // MIN_PER_CLIENT)} --clients, or more data")
    check_run(cfg.model, dataset, cfg.seed)  # the model, on a few real examples, before anything runs
    profiles = make_profiles(sim.clients, seed=cfg.seed, horizon=sim.horizon, malicious=sim.malicious,
                             speed_sigma=sim.speed_sigma, churn=sim.churn,
                             sec_per_example=base_sec_per_example(pool, sim.clients),
                             mean_on=sim.mean_on, mean_off=sim.mean_off)
    grid = VirtualGrid(profiles, dataset=dataset, seed=cfg.seed, alpha=cfg.alpha)
    result = AsyncServer(grid, cfg, clock=grid.clock, progress=progress).run()
    result.update({"clients": sim.clients, "malicious": sim.malicious, "horizon": sim.horizon,
                   "lost_replies": grid.lost, "churn": sim.churn, "speed_sigma": sim.speed_sigma,
                   **dict(zip(("mean_on", "mean_off"), churn_means(sim.horizon, sim.mean_on, sim.mean_off))),
                   "attacks": {str(p.node_id): p.attack for p in profiles if p.attack}})
    return result
