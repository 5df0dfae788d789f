"""Run configuration shared by the ServerApp, the simulation and the CLI (Flower run_config keys
are the kebab-case field names, e.g. ``buffer-size``)."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, fields

from edgekit.core.errors import DataError, UsageError

METHODS = ("cloned", "fedbuff", "fedavg")
MODELS = ("mlp", "cnn")  # federated/models.py builds them; or the user's pkg.mod:fn / path/file.py:fn


@dataclass
class FedConfig:
    method: str = "cloned"  # cloned | fedbuff | fedavg
    dataset: str = "digits"  # digits | fashion-mnist | the path of an .npz/.csv file (made absolute)
    model: str = "mlp"  # mlp | cnn | pkg.mod:fn | path/file.py:fn (made absolute; see usermodel.py)
    seed: int = 0  # data split, partitions, model init and client shuffles
    alpha: float = 0.5  # Dirichlet non-IID concentration of the partitions
    num_partitions: int = 0  # informative; nodes carry their own partition config
    lr: float = 0.05  # client SGD learning rate
    epochs: int = 2  # local epochs per clone
    batch_size: int = 32  # client SGD mini-batch
    logit_adjust: float = 1.0  # client loss CE(z + tau*log(node's label prior)) against label skew (0: plain CE)
    buffer_size: int = 5  # K: teachers (or deltas) per core update
    attend: float = 1.0  # distillation: weight on teachers vs. retaining the core (paper: amplify)
    init: str = "delta"  # student start: delta (core + weighted teacher updates) | average | core
    screen: bool = True  # teacher screening on the server validation set (+ step guard)
    clip: bool = True  # clip each update to the median over nodes of their median update norm
    guard: float = 0.03  # keep the core if a step lowers validation accuracy by more than this
    distill_epochs: int = 1  # cloned: passes over the public split per distillation (0: none)
    distill_lr: float = 0.05  # SGD (momentum 0.9) on the public split
    temperature: float = 2.0  # cloned: distillation softmax temperature
    server_lr: float = 1.0  # server step on the buffered (weighted mean) update, both async methods
    server_momentum: float = 0.0  # heavy-ball momentum on that step (0: plain FedBuff step)
    example_weighting: bool = True  # cloned: weight updates by examples (False: uniform, as FedBuff)
    example_cap: float = 4.0  # cloned: a claimed example count counts at most this x the median claim (0: off)
    ema: float = 0.9  # async: serve (and evaluate) an EMA of the core over versions (0: the core)
    fedavg_ema: float = 0.0  # the same for FedAvg, per round (0: Flower's latest aggregate)
    combine: str = "mean"  # cloned: distillation target, mean of teachers | bayes (distill.bayes_targets)
    teacher_window: int = 0  # cloned: distil from the last N kept teachers (0: the buffer only)
    distill_accept: bool = True  # keep the distilled core only if it beats the undistilled start on val
    refill: bool = True  # cloned: a buffer is aggregated only once K teachers passed screening
    norm_history: int = 100  # cloned: screen update norms against the last N kept ones (0: off)
    norm_per_step: bool = True  # cloned: screen update sizes per local SGD step (ceil(examples/batch))
    guard_window: int = 5  # cloned: the step guard compares with the median val of the last N cores
    cached_updates: bool = True  # cloned: a step averages every node's latest kept update (MIFA)
    rate_weighting: bool = False  # cloned: divide an update's weight by its node's update count
    lr_decay: float = 0.0  # cloned: server step server_lr/sqrt(1+version/lr_decay) (0: constant)
    ema_warmup: bool = True  # serving EMA decay min(ema, (1+n)/(10+n)) after n updates (else the
    #   served model keeps the random init's weight ema**n early on)
    staleness: str = "sqrt"  # s(tau) = 1/sqrt(1+tau) | none
    max_staleness: int = 20  # older updates are rejected
    deadline: float = 60.0  # a clone's first deadline (then per node: node_deadline); FedAvg: round timeout
    max_wait: float = 0.0  # aggregate a partial buffer after this long (0: never)
    poll: float = 0.2  # seconds between pulls
    max_versions: int = 20  # stop after this many core updates (FedAvg: rounds)
    max_time: float = 0.0  # stop after this many seconds, real or virtual (0: no limit)
    checkpoint_dir: str = ""  # "" disables checkpoints
    out: str = ""  # write the result JSON here when the run ends
    min_nodes: int = 1  # wait for this many nodes before the first dispatch

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"unknown method {self.method!r}", f"use one of {', '.join(METHODS)}")
        from .data import dataset_ref
        from .usermodel import model_ref

        self.model = model_ref(self.model)  # a model file too goes in as an absolute path

        try:  # a data file goes into the run config as an absolute path (other processes, other cwd)
            self.dataset = dataset_ref(self.dataset)
        except DataError as err:
            raise UsageError(err.message, err.hint) from None
        if not self.epochs >= 1:
            raise UsageError(f"epochs must be >= 1, got {self.epochs}")
        if not 0 < self.lr < float("inf"):
            raise UsageError(f"lr must be > 0 and finite, got {self.lr}")
        if not 0 <= self.seed < 2**62:  # numpy rejects negative seeds; torch takes 64-bit ones
            raise UsageError(f"seed must be in [0, 2**62), got {self.seed}")
        if not 0 < self.alpha < float("inf"):
            raise UsageError(f"alpha (Dirichlet concentration) must be > 0 and finite, got {self.alpha}",
                             "e.g. 0.1 (very non-IID) to 100 (nearly IID)")
        if self.max_versions < 1:
            raise UsageError(f"max-versions must be >= 1, got {self.max_versions}")
        if self.max_time < 0:
            raise UsageError(f"max-time must be >= 0 (0: no limit), got {self.max_time}")
        if self.min_nodes < 0:
            raise UsageError(f"min-nodes must be >= 0, got {self.min_nodes}")
        if self.buffer_size < 1:
            raise UsageError("buffer-size must be >= 1")
        if not 0.0 <= self.attend <= 1.0:
            raise UsageError(f"attend must be in [0, 1], got {self.attend}")
        if not 0.0 <= self.server_momentum < 1.0:
            raise UsageError(f"server-momentum must be in [0, 1), got {self.server_momentum}")
        for name in ("ema", "fedavg_ema"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UsageError(f"{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")
        if self.combine not in ("mean", "bayes"):
            raise UsageError(f"combine must be 'mean' or 'bayes', got {self.combine!r}")
        if self.combine == "bayes" and self.teacher_window > 0:
            raise UsageError("combine=bayes cannot be used with a teacher-window", "use teacher-window 0")
        if not 0.0 <= self.example_cap < float("inf"):
            raise UsageError(f"example-cap must be >= 0 and finite (0: off), got {self.example_cap}")
        if self.server_lr <= 0:
            raise UsageError(f"server-lr must be > 0, got {self.server_lr}")
        if not self.deadline > 0:
            raise UsageError(f"deadline must be > 0 seconds, got {self.deadline}")
        # every setting is reachable from the command line (--set), so each gets its range check
        for name, ok, want in (
                ("batch_size", self.batch_size >= 1, ">= 1"), ("distill_epochs", self.distill_epochs >= 0, ">= 0"),
                ("logit_adjust", 0 <= self.logit_adjust < float("inf"), ">= 0 and finite (0: plain CE)"),
                ("distill_lr", 0 < self.distill_lr < float("inf"), "> 0 and finite"),
                ("temperature", 0 < self.temperature < float("inf"), "> 0 and finite"),
                ("guard", 0 <= self.guard <= 1, "in [0, 1]"), ("teacher_window", self.teacher_window >= 0, ">= 0"),
                ("norm_history", self.norm_history >= 0, ">= 0"), ("guard_window", self.guard_window >= 0, ">= 0"),
                ("lr_decay", 0 <= self.lr_decay < float("inf"), ">= 0 and finite (0: off)"),
                ("max_staleness", self.max_staleness >= 0, ">= 0"),
                ("max_wait", 0 <= self.max_wait < float("inf"), ">= 0 and finite (0: never)"),
                ("poll", 0 < self.poll < float("inf"), "> 0 and finite")):
            if not ok:
                raise UsageError(f"{name.replace('_', '-')} must be {want}, got {getattr(self, name)}")
        for name, allowed in (("init", ("delta", "average", "core")), ("staleness", ("sqrt", "poly", "none"))):
            if getattr(self, name) not in allowed:
                raise UsageError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")

    @classmethod
    def from_run_config(cls, rc: dict) -> "FedConfig":
        known = {f.name: f for f in fields(cls)}
        kw = {}
        for key, value in dict(rc).items():
            name = key.replace("-", "_")
            if name not in known:
                continue
            typ = known[name].type
            if typ == "bool" and isinstance(value, str):
                value = value.lower() in ("1", "true", "yes")
            kw[name] = _CAST[typ](value)
        return cls(**kw)

    def to_run_config(self) -> dict:
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}

    def client_config(self, version: int) -> dict:
        return {"version": int(version), "model": self.model, "dataset": self.dataset,
                "alpha": float(self.alpha), "seed": int(self.seed), "lr": float(self.lr),
                "epochs": int(self.epochs), "batch-size": int(self.batch_size),
                "logit-adjust": float(self.logit_adjust)}


_CAST = {"int": int, "float": float, "str": str, "bool": bool}  # a field's type name -> its conversion
_BOOLS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def settings_table() -> list[tuple[str, str, object, str]]:
    """Every run setting as (run-config key, type, default, what it does): what ``--set`` accepts.
    The description is the field's comment in this file (one source for code and help)."""
    import inspect
    import re

    notes: dict[str, str] = {}
    last = None
    try:
        source = inspect.getsource(FedConfig).splitlines()
    except OSError:  # no source shipped (e.g. a byte-code-only install): no descriptions
        source = []
    for line in source:
        m = re.match(r"\s{4}(\w+): \w+ = .*?#\s*(.*)$", line)
        if m:
            last, notes[m.group(1)] = m.group(1), m.group(2).strip()
        elif last and re.match(r"\s+#\s+", line):  # a comment's continuation line
            notes[last] += " " + line.strip().lstrip("#").strip()
        else:
            last = None
    return [(f.name.replace("_", "-"), f.type, f.default, notes.get(f.name, "")) for f in fields(FedConfig)]


def parse_sets(items: list[str] | None, reserved: dict[str, str] | None = None,
               option: str = "--set") -> dict:
    """``--set KEY=VALUE`` items -> FedConfig keyword arguments. KEY is a run-config key
    (``ema-warmup``) or its field name (``ema_warmup``); VALUE is converted to the field's type.
    ``reserved`` maps fields that have their own command-line option to that option; ``option``
    is the option named in error messages (one ending in ":" is joined to the key directly)."""
    lead = option if option.endswith(":") else option + " "
    known = {f.name: f for f in fields(FedConfig)}
    reserved = reserved or {}
    out: dict = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        name = key.replace("-", "_")
        if not sep or not name:
            raise UsageError(f"{lead}{item!r} is not KEY=VALUE", f"e.g. {lead}ema=0.95")
        if name in reserved:
            raise UsageError(f"{lead}{key}: this command sets it with {reserved[name]}", f"use {reserved[name]}")
        if name not in known:
            close = difflib.get_close_matches(key.replace("_", "-"), [k.replace("_", "-") for k in known], 3)
            raise UsageError(f"{lead}{key}: no such setting" + (f" (did you mean {', '.join(close)}?)" if close else ""),
                             "`edgekit federated settings` lists every setting with its type and default")
        if name in out:
            raise UsageError(f"{lead}{key} is given twice", "give each setting once")
        typ = known[name].type
        if typ == "bool":
            if raw.lower() not in _BOOLS:
                raise UsageError(f"{lead}{key}={raw}: true or false expected", f"e.g. {lead}{key}=false")
            out[name] = _BOOLS[raw.lower()]
            continue
        try:
            out[name] = _CAST[typ](raw)
        except ValueError:
            raise UsageError(f"{lead}{key}={raw}: {'an integer' if typ == 'int' else 'a number'} expected",
                             f"e.g. {lead}{key}={known[name].default}") from None
    return out
