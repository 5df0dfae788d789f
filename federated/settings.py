"""Settings as dataclass fields: the one place each default, its help and its allowed range live.

Each configuration dataclass (the run's :class:`~edgekit.federated.config.RunConfig`, one per
strategy, the simulation's :class:`~edgekit.federated.sim.SimConfig`) declares its fields with
:func:`setting`. Everything else is generated from them: the range checks (:func:`validate`), the
Flower run config (kebab-case keys, :func:`from_run_config`), ``--set KEY=VALUE``
(:func:`parse_sets`), the command-line options of ``simulate`` / ``server`` and
``edgekit federated settings`` (:func:`rows`). Pure Python: no torch, no flwr.
"""
from __future__ import annotations

import difflib
import math
import typing
from dataclasses import MISSING, Field, field, fields, make_dataclass

from edgekit.core.errors import UsageError

BOOLS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
CAST = {int: int, float: float, str: str, bool: bool}


def setting(default, help: str, *, choices: tuple = (), check: tuple | None = None, hint: str | None = None,
            server_default=None) -> Field:
    """A settings field. ``check`` is (what is allowed, predicate), e.g. ``at_least(1)``;
    ``server_default`` is the default of ``edgekit federated server`` where it differs (files)."""
    return field(default=default, metadata={"help": help, "choices": tuple(choices), "check": check,
                                            "hint": hint, "server_default": server_default})


def at_least(lo) -> tuple:
    return f">= {lo}", lambda v: v >= lo


def positive(what: str = "> 0 and finite") -> tuple:
    return what, lambda v: 0 < v < math.inf


def non_negative(note: str = "") -> tuple:
    return ">= 0 and finite" + note, lambda v: 0 <= v < math.inf


def unit(closed: bool = True) -> tuple:
    """In [0, 1] (or [0, 1) with ``closed=False``)."""
    return ("in [0, 1]", lambda v: 0 <= v <= 1) if closed else ("in [0, 1)", lambda v: 0 <= v < 1)


def key(name: str) -> str:
    """A field name as a run-config key and option name: ``buffer_size`` -> ``buffer-size``."""
    return name.replace("_", "-")


def types(cls) -> dict[str, type]:
    """Each field's type (annotations are strings under ``from __future__ import annotations``)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in fields(cls):
        t = hints[f.name]
        args = [a for a in typing.get_args(t) if a is not type(None)]
        out[f.name] = args[0] if args else t  # Optional[float] -> float
    return out


def validate(obj) -> None:
    """Raise UsageError for the first field outside its choices or range."""
    for f in fields(obj):
        v, meta = getattr(obj, f.name), f.metadata
        if v is None and f.default is None:
            continue
        if meta.get("choices") and v not in meta["choices"]:
            raise UsageError(f"{key(f.name)} must be one of {', '.join(meta['choices'])}, got {v!r}")
        check = meta.get("check")
        if check is not None and not check[1](v):
            raise UsageError(f"{key(f.name)} must be {check[0]}, got {v!r}", meta.get("hint"))


def combine(name: str, sections: tuple, bases: tuple = (), doc: str = "") -> type:
    """One flat dataclass holding every field of ``sections`` (a field shared by several sections,
    e.g. a strategy base's ``buffer_size``, appears once: it is the same field object)."""
    seen: dict[str, tuple] = {}
    for section in sections:
        hints = typing.get_type_hints(section)
        for f in fields(section):
            if f.name in seen:
                if seen[f.name][2].default != f.default:
                    raise TypeError(f"setting {f.name} has two defaults")
                continue
            seen[f.name] = (f.name, hints[f.name], field(default=f.default, metadata=f.metadata))
    cls = make_dataclass(name, list(seen.values()), bases=bases)
    cls.__doc__ = doc
    return cls


def pick(cls, values) -> dict:
    """The values (an object or a dict) of ``cls``'s fields."""
    get = values.get if isinstance(values, dict) else lambda n, d=None: getattr(values, n, d)
    return {f.name: get(f.name) for f in fields(cls) if get(f.name, MISSING) is not MISSING}


def rows(sections: dict[str, type]) -> list[dict]:
    """Every setting once: key, type, default, help, and the sections (methods) it belongs to."""
    out: dict[str, dict] = {}
    for owner, cls in sections.items():
        typ = types(cls)
        for f in fields(cls):
            r = out.setdefault(f.name, {"key": key(f.name), "type": typ[f.name].__name__, "default": f.default,
                                        "help": f.metadata.get("help", ""), "for": []})
            r["for"].append(owner)
    return list(out.values())


def from_run_config(cls, rc: dict) -> dict:
    """Flower run-config values -> ``cls`` keyword arguments (keys of other versions are ignored)."""
    typ = types(cls)
    kw = {}
    for k, value in dict(rc).items():
        name = k.replace("-", "_")
        if name not in typ:
            continue
        if typ[name] is bool and isinstance(value, str):
            value = value.lower() in ("1", "true", "yes")
        kw[name] = CAST[typ[name]](value)
    return kw


def parse_sets(cls, items: list[str] | None, reserved: dict[str, str] | None = None,
               option: str = "--set") -> dict:
    """``--set KEY=VALUE`` items -> ``cls`` keyword arguments. KEY is a run-config key
    (``ema-warmup``) or its field name (``ema_warmup``); VALUE is converted to the field's type.
    ``reserved`` maps fields that have their own command-line option to that option; ``option``
    is the option named in error messages (one ending in ":" is joined to the key directly)."""
    lead = option if option.endswith(":") else option + " "
    typ, defaults = types(cls), {f.name: f.default for f in fields(cls)}
    reserved = reserved or {}
    out: dict = {}
    for item in items or []:
        k, sep, raw = item.partition("=")
        k, raw = k.strip(), raw.strip()
        name = k.replace("-", "_")
        if not sep or not name:
            raise UsageError(f"{lead}{item!r} is not KEY=VALUE", f"e.g. {lead}ema=0.95")
        if name in reserved:
            raise UsageError(f"{lead}{k}: this command sets it with {reserved[name]}", f"use {reserved[name]}")
        if name not in typ:
            close = difflib.get_close_matches(key(k), [key(n) for n in typ], 3)
            raise UsageError(f"{lead}{k}: no such setting" + (f" (did you mean {', '.join(close)}?)" if close else ""),
                             "`edgekit federated settings` lists every setting with its type and default")
        if name in out:
            raise UsageError(f"{lead}{k} is given twice", "give each setting once")
        if typ[name] is bool:
            if raw.lower() not in BOOLS:
                raise UsageError(f"{lead}{k}={raw}: true or false expected", f"e.g. {lead}{k}=false")
            out[name] = BOOLS[raw.lower()]
            continue
        try:
            out[name] = CAST[typ[name]](raw)
        except ValueError:
            raise UsageError(f"{lead}{k}={raw}: {'an integer' if typ[name] is int else 'a number'} expected",
                             f"e.g. {lead}{k}={defaults[name]}") from None
    return out
