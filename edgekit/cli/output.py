"""What every command prints: strict JSON on stdout, rich tables, plain lines, progress on stderr."""
from __future__ import annotations

import json
import math
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

# a pipe or CI log is no terminal: give tables room instead of rich's 80-column default
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 160)
def emit_json(data: Any) -> None:
    """Machine-readable output: one strict JSON document on stdout, nothing else (NaN/±inf, which
    JSON has no literal for, become null so jq, JavaScript and other strict parsers read it)."""
    sys.stdout.write(json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")
    sys.stdout.flush()


def _finite(o: Any) -> Any:
    """A JSON-ready copy of ``o``: arrays/numpy scalars as lists/numbers, non-finite floats as None."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, (str, int, bool)) or o is None:
        return o
    if isinstance(o, dict):
        return {str(k): _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if hasattr(o, "tolist"):
        return _finite(o.tolist())
    if hasattr(o, "item"):
        return _finite(o.item())
    return str(o)


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    t = Table(title=title, show_lines=False)
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*["" if v is None else escape(str(v)) for v in r])  # shapes like [batch, 8] are not markup
    out.print(t)


def say(text: str) -> None:
    """Print plain text (never interpreted as rich markup)."""
    out.print(text, markup=False, highlight=False)


def fmt(v: Any, spec: str = ".3g") -> str:
    if v is None:
        return "-"
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def status(message: str, quiet: bool = False):
    """A rich spinner on stderr (a no-op context when quiet or not a terminal)."""
    if quiet or not err.is_terminal:
        return _Plain(quiet)
    return err.status(message)


class _Plain:
    """Progress lines on stderr for logs and CI (or nothing when quiet)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __enter__(self) -> "_Plain":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, msg: str) -> None:
        if not self.quiet:
            err.print(f"[dim]{msg}[/dim]")
