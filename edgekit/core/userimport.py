"""Import a user's callable named ``package.module:function`` or ``path/to/file.py:function``.

One implementation for every command that takes such a reference (``edgekit export MODEL``,
``edgekit federated --model``). Torch-free.
"""
from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any, Callable

from edgekit.core.errors import UsageError, first_line


def is_callable_ref(ref: str) -> bool:
    """``pkg.mod:fn`` or ``path/to/file.py:fn``."""
    return bool(re.fullmatch(r"[\w.]+:\w+", ref) or re.fullmatch(r".+\.py:\w+", ref))


def file_of(ref: str) -> Path | None:
    """The file of a ``path/file.py:fn`` reference (None for ``pkg.mod:fn``)."""
    mod = ref.rsplit(":", 1)[0]
    return Path(mod) if mod.endswith(".py") else None


def absolute_ref(ref: str) -> str:
    """``path/file.py:fn`` with the file's resolved absolute path (for other processes and working
    directories); ``pkg.mod:fn`` unchanged."""
    path = file_of(ref)
    return ref if path is None else f"{path.expanduser().resolve()}:{ref.rsplit(':', 1)[1]}"


def import_module_or_file(mod_name: str) -> Any:
    """``pkg.module``, or a file ``path/to/models.py`` (imported under its stem, its folder on sys.path
    so its own sibling imports and pickled classes resolve)."""
    if not mod_name.endswith(".py"):
        return importlib.import_module(mod_name)
    path = Path(mod_name).expanduser().resolve()
    if not path.is_file():
        raise ImportError(f"no such file: {mod_name}")
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def cwd_on_path() -> None:
    """Like ``python -m``: modules in the current directory can be imported by name (``pkg.mod:fn``,
    and the classes of a pickled model)."""
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")


def load_callable(ref: str, hint: str) -> Callable:
    """The function ``ref`` names; a UsageError (with ``hint`` as the fix) if it cannot be imported,
    does not exist or is not callable."""
    mod_name, fn_name = ref.rsplit(":", 1)
    cwd_on_path()
    try:
        fn = getattr(import_module_or_file(mod_name), fn_name)
    except Exception as e:  # ImportError, a missing name, or the user's module failing as it runs
        raise UsageError(f"cannot import {ref!r} ({type(e).__name__}: {first_line(e)})", hint) from None
    if not callable(fn):
        raise UsageError(f"{ref} is not callable (it is of type {type(fn).__name__})", hint)
    return fn

