"""The edgekit command line (``edgekit`` or ``python -m edgekit``).

Commands live in edgekit/commands/*.py; every module there that defines ``register(app)`` is added.
User mistakes (EdgekitError) print one line and exit non-zero; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import importlib
import json
import math
import os
import signal
import pkgutil
import sys
import traceback
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgekit.errors import EdgekitError, first_line

app = typer.Typer(name="edgekit", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Take PyTorch models to edge devices: export, validate, run and benchmark bundles.")
# a pipe or CI log is no terminal: give tables room instead of rich's 80-column default
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 160)
DEBUG = False


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


def _register_commands() -> None:
    import edgekit.commands as pkg

    core = ("export", "inspect")  # the bundle commands first in --help, then the features
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: (i.name not in core, core.index(i.name)
                                                                          if i.name in core else 0, i.name)):
        mod = importlib.import_module(f"edgekit.commands.{info.name}")
        reg = getattr(mod, "register", None)
        if callable(reg):
            reg(app)


def _quiet_libraries() -> None:
    """Keep third-party chatter (torch.onnx registration warnings, deprecations) off the user's screen."""
    import logging
    import warnings

    if not DEBUG:
        warnings.filterwarnings("ignore")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        for name in ("torch", "torch.onnx", "torch._dynamo", "torch.export", "onnxscript", "nncf", "coremltools"):
            logging.getLogger(name).setLevel(logging.ERROR)


def _terminate_cleanly() -> None:
    """SIGTERM (kill, a job scheduler, docker stop): remove the staged bundle and work directories
    (an abrupt exit would leave them behind), then exit 143 at once (an exception could be swallowed
    by library code and leave the process running)."""
    def handler(signum: int, frame: Any) -> None:
        from edgekit.bundle import remove_work_dirs

        remove_work_dirs()
        sys.stderr.write("edgekit: terminated\n")
        sys.stderr.flush()
        os._exit(143)

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (embedded use): leave the default
        pass


def main(argv: list[str] | None = None) -> None:
    global DEBUG
    import click

    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args:
        args.remove("--debug")
        DEBUG = True
    DEBUG = DEBUG or os.environ.get("EDGEKIT_DEBUG") == "1"
    _quiet_libraries()
    _terminate_cleanly()
    _register_commands()
    cmd = typer.main.get_command(app)
    try:
        rv = cmd.main(args=args, prog_name="edgekit", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        sys.stderr.write("edgekit: interrupted\n")
        sys.exit(130)
    except EdgekitError as e:
        if DEBUG:
            traceback.print_exc()
        sys.stderr.write(f"edgekit: error: {e}\n")
        sys.exit(e.exit_code)
    except Exception as e:  # a bug, not a user mistake: still one line unless --debug
        if isinstance(e, OSError) and e.filename:  # a path the user named: a file in the way, no permission, disk full
            if DEBUG:
                traceback.print_exc()
            what = " -> ".join(str(f) for f in (e.filename, e.filename2) if f)
            sys.stderr.write(f"edgekit: error: {e.strerror or type(e).__name__}: {what} "
                             "(fix: check the path, its permissions and the free disk space)\n")
            sys.exit(1)
        if DEBUG:
            traceback.print_exc()
        first = first_line(e)
        sys.stderr.write(f"edgekit: internal error: {type(e).__name__}: {first} (run with --debug for the traceback)\n")
        sys.exit(70)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
