"""What every command prints: strict JSON on stdout, rich tables, plain lines, progress on stderr.

Progress (``progress()``): a rich spinner with the current stage and the elapsed time when stderr is
a terminal; nothing in a pipe or under ``--json``, unless ``--verbose``, which prints one plain
``edgekit: STAGE`` line per stage on stderr (for CI logs). Warnings (``warning()``) are always printed.
"""
from __future__ import annotations

import json
import math
import sys
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgekit.core.notices import user_stderr, verbose

# a pipe or CI log is no terminal: give tables room instead of rich's 80-column default
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
# edgekit's own stderr: the terminal even while third-party output is captured (core.notices)
err = Console(file=user_stderr, soft_wrap=True, width=None if user_stderr.isatty() else 160)
EMITTED: list[bool] = []  # a JSON document is on stdout (an error after it goes to stderr: one document only)


def emit_json(data: Any) -> None:
    """Machine-readable output: one strict JSON document on stdout, nothing else (NaN/±inf, which
    JSON has no literal for, become null so jq, JavaScript and other strict parsers read it)."""
    sys.stdout.write(json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")
    sys.stdout.flush()
    EMITTED.append(True)


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


def warning(message: str) -> None:
    """``edgekit: warning: ...`` on stderr, in every mode (a choice made for the user is never silent)."""
    err.print(f"edgekit: warning: {message}", markup=False, highlight=False)


def progress(message: str = "", quiet: bool = False, total: int | None = None):
    """Stage progress on stderr (see the module doc); ``.update(msg)`` names the next stage, ``.advance()``
    counts one of ``total`` items (a bar on a terminal)."""
    if err.is_terminal and not quiet:
        return _Live(message, total)
    return _Plain(message, quiet=not verbose(), total=total)


status = progress  # the older name


class _Live:
    """A transient rich spinner (or bar, with a total): stage text + elapsed time."""

    def __init__(self, message: str, total: int | None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        cols = [SpinnerColumn(), TextColumn("{task.description}")]
        if total:
            cols += [BarColumn(), MofNCompleteColumn()]
        self.bar = Progress(*cols, TimeElapsedColumn(), console=err, transient=True,
                            redirect_stdout=False, redirect_stderr=False)  # library output is captured instead
        self.task = self.bar.add_task(message or "working", total=total)

    def __enter__(self) -> "_Live":
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def update(self, msg: str) -> None:
        self.bar.update(self.task, description=escape(msg.strip()))

    def advance(self, n: int = 1) -> None:
        self.bar.advance(self.task, n)


class _Plain:
    """One ``edgekit: STAGE`` line per stage on stderr (``--verbose`` in a pipe), or nothing."""

    def __init__(self, message: str, quiet: bool, total: int | None = None) -> None:
        self.quiet, self.total, self.done, self.t0 = quiet, total, 0, time.perf_counter()
        self.step = max(1, (total or 100) // 10)
        if message:
            self.update(message)

    def __enter__(self) -> "_Plain":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, msg: str) -> None:
        if not self.quiet:
            err.print(f"edgekit: {time.perf_counter() - self.t0:6.1f}s {msg.strip()}", markup=False, highlight=False)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.done % self.step == 0 or self.done == self.total:
            self.update(f"{self.done}/{self.total or '?'}")
