"""edgekit.federated: asynchronous cloned/buffered-distillation edge learning on Flower.

Light on purpose: importing this package imports neither torch nor flwr. The public API:

    simulate(method, **settings)      virtual-clock simulation (sim/), returns the result with its curve
    SimConfig, FedConfig              the simulation's and the run's settings (one default each)
    settings_table()                  every run setting: key, type, default, help, methods
    load_dataset, partitions, resolve_dataset          the data sets and their client partitions
    make_profiles, churn_means, base_sec_per_example   the simulated nodes

Layout: ``strategies/`` (one per file over a small base: fedbuff, cloned with screening and
distill, Flower's fedavg), ``server/`` (the async loop, reply checks, checkpoint, the ServerApp),
``client.py`` (the ClientApp), ``sim/`` (virtual-clock grid and nodes), ``deploy.py`` (Flower
processes), ``config.py`` / ``settings.py`` (settings), ``data.py`` / ``userdata.py`` /
``models.py`` / ``usermodel.py`` (data and models). See docs/federated.md.
"""
from __future__ import annotations

_API = {"simulate": "sim", "SimConfig": "sim", "FedConfig": "config", "settings_table": "config",
        "load_dataset": "data", "partitions": "data", "resolve_dataset": "data",
        "make_profiles": "sim.nodes", "churn_means": "sim.nodes", "base_sec_per_example": "sim.nodes"}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
