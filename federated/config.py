"""The run configuration: the settings every method shares (:class:`RunConfig`) and each
strategy's own (strategies/*.py), together as one flat :class:`FedConfig`.

Flower run-config keys are the kebab-case field names (``buffer-size``). Each default, its help
and its range are written once, on the field (settings.py); the commands' options, ``--set`` and
``edgekit federated settings`` are generated from them. Importing this imports no torch or flwr.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

from edgekit.core.errors import DataError, UsageError

from . import settings
from .data import dataset_ref
from .settings import at_least, non_negative, positive, setting, unit
from .strategies import CONFIGS
from .usermodel import model_ref

METHODS = ("cloned", "fedbuff", "fedavg")
SEED_LIMIT = 2**62  # numpy rejects negative seeds; torch takes 64-bit ones


@dataclass
class RunConfig:
    """Settings of every method: data, model, client training, serving, the server loop."""

    method: str = setting("cloned", "cloned | fedbuff | fedavg", choices=METHODS)
    dataset: str = setting("digits", "digits | fashion-mnist | the path of an .npz/.csv file (made absolute)")
    model: str = setting("mlp", "mlp | cnn | pkg.mod:fn | path/file.py:fn (made absolute; see usermodel.py)")
    seed: int = setting(0, "data split, partitions, model init and client shuffles",
                        check=("in [0, 2**62)", lambda v: 0 <= v < SEED_LIMIT))
    alpha: float = setting(0.5, "Dirichlet non-IID concentration of the partitions", check=positive(),
                           hint="e.g. 0.1 (very non-IID) to 100 (nearly IID)")
    num_partitions: int = setting(0, "informative; nodes carry their own partition config", check=at_least(0))
    lr: float = setting(0.05, "client SGD learning rate", check=positive())
    epochs: int = setting(2, "local epochs per clone", check=at_least(1))
    batch_size: int = setting(32, "client SGD mini-batch", check=at_least(1))
    logit_adjust: float = setting(1.0, "client loss CE(z + tau*log(node's label prior)) against label skew "
                                       "(0: plain CE)", check=non_negative(" (0: plain CE)"))
    ema: float = setting(0.9, "async: serve (and evaluate) an EMA of the core over versions (0: the core)",
                         check=unit(closed=False))
    ema_warmup: bool = setting(True, "serving EMA decay min(ema, (1+n)/(10+n)) after n updates (else the "
                                     "served model keeps the random init's weight ema**n early on)")
    max_staleness: int = setting(20, "older updates are rejected (and leave the cloned update cache)",
                                 check=at_least(0))
    deadline: float = setting(60.0, "seconds a clone may take at first (then per node: 2x its round trip, "
                                    "doubled by each miss, max 8x); FedAvg: the round timeout",
                              check=positive("> 0 seconds"))
    poll: float = setting(0.2, "seconds between pulls", check=positive())
    max_versions: int = setting(20, "stop after this many core updates (FedAvg: rounds)", check=at_least(1))
    max_time: float = setting(0.0, "stop after this many seconds, real or virtual (0: no limit)",
                              check=(">= 0 (0: no limit)", lambda v: 0 <= v <= math.inf))
    checkpoint_dir: str = setting("", "atomic checkpoint directory; a restart resumes from it (\"\": none)",
                                  server_default="federated-ckpt")
    out: str = setting("", "write the result JSON here when the run ends (\"\": nowhere)",
                       server_default="federated-result.json")
    min_nodes: int = setting(1, "wait for this many nodes before the first dispatch", check=at_least(0))

    def __post_init__(self) -> None:
        settings.validate(self)
        self.model = model_ref(self.model)  # a model file too goes in as an absolute path
        try:  # a data file goes into the run config as an absolute path (other processes, other cwd)
            self.dataset = dataset_ref(self.dataset)
        except DataError as err:
            raise UsageError(err.message, err.hint) from None


SECTIONS = {"all": RunConfig, **CONFIGS}  # a setting's owners, for the settings table


class _Methods:
    def __post_init__(self) -> None:
        for section in (RunConfig, *CONFIGS.values()):  # each section checks its own fields
            values = section(**settings.pick(section, self))
            for f in fields(section):
                setattr(self, f.name, getattr(values, f.name))  # normalised (absolute paths)

    def strategy_config(self):
        """The config of this run's method (a strategies.CONFIGS instance)."""
        cls = CONFIGS[self.method]
        return cls(**settings.pick(cls, self))

    @classmethod
    def from_run_config(cls, rc: dict) -> "FedConfig":
        """From Flower's run config (kebab-case keys; keys of other versions are ignored)."""
        return cls(**settings.from_run_config(cls, rc))

    def to_run_config(self) -> dict:
        return {settings.key(f.name): getattr(self, f.name) for f in fields(self)}

    def client_config(self, version: int) -> dict:
        """What every instruction tells the client: the version and the training settings."""
        return {"version": int(version), "model": self.model, "dataset": self.dataset,
                "alpha": float(self.alpha), "seed": int(self.seed), "lr": float(self.lr),
                "epochs": int(self.epochs), "batch-size": int(self.batch_size),
                "logit-adjust": float(self.logit_adjust)}


FedConfig = settings.combine("FedConfig", (RunConfig, *CONFIGS.values()), bases=(_Methods,),
                             doc="Every run setting, flat: RunConfig's and each strategy's (one field each).")
FedConfig.__module__ = __name__


def settings_table() -> list[dict]:
    """Every run setting: key, type, default, help and the methods it applies to ("all" or some)."""
    return settings.rows(SECTIONS)


def parse_sets(items: list[str] | None, reserved: dict[str, str] | None = None, option: str = "--set") -> dict:
    """``--set KEY=VALUE`` items -> FedConfig keyword arguments (see settings.parse_sets)."""
    return settings.parse_sets(FedConfig, items, reserved, option)
