"""The edgekit command line (``edgekit`` or ``python -m edgekit``).

One module per command group in edgekit/cli/ (each defines ``register(app)``); output helpers in
edgekit/cli/output.py. User mistakes (EdgekitError) print one line and exit non-zero; ``--debug``
shows the traceback. When the command line has ``--json``, every error (a user mistake, a usage
error, an internal error) is instead one JSON object ``{"error", "fix", "type", "exit_code"}`` on
stdout, and nothing else is. Global flags, accepted anywhere on the line: ``--verbose`` (show
third-party output and progress lines in pipes), ``--debug`` (--verbose + tracebacks); ``--version``.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from typing import Any

import typer

from edgekit.cli import backends, eval, export, federated, inspect, ppp, tokengate, vos
from edgekit.cli import output as cli
from edgekit.core.bundle import remove_work_dirs
from edgekit.core.errors import EdgekitError, first_line
from edgekit.core.notices import EdgekitWarning, user_stderr, user_stdout
from edgekit.core.version import __version__

app = typer.Typer(name="edgekit", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Take PyTorch models to edge devices: export, validate, run and benchmark bundles.")
COMMANDS = (export, inspect, eval, backends, federated, ppp, tokengate, vos)
DEBUG = False
JSON = False


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"edgekit {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print the edgekit version and exit."),
    verbose: bool = typer.Option(False, "--verbose", help="Show third-party output (torch, OpenVINO, ...) and "
                                 "progress lines when stderr is not a terminal. Accepted anywhere on the line."),
    debug: bool = typer.Option(False, "--debug", help="--verbose, plus the traceback of any error. "
                               "Accepted anywhere on the line."),
) -> None:
    """Take PyTorch models to edge devices: export, validate, run and benchmark bundles."""


def _register_commands() -> None:
    """Add every command group (the bundle commands first in --help, then the features)."""
    for mod in COMMANDS:
        mod.register(app)


def _quiet_libraries() -> None:
    """Keep third-party chatter (torch.onnx registration warnings, deprecations) off the user's screen."""
    import logging
    import warnings

    if os.environ.get("EDGEKIT_VERBOSE") != "1":
        warnings.filterwarnings("ignore")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        for name in ("torch", "torch.onnx", "torch._dynamo", "torch.export", "onnxscript", "nncf", "coremltools",
                     "torchao", "executorch"):
            logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("always", category=EdgekitWarning)  # edgekit's own: never hidden
    default_show = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, EdgekitWarning):
            return cli.warning(str(message))
        return default_show(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def _terminate_cleanly() -> None:
    """SIGTERM (kill, a job scheduler, docker stop): remove the staged bundle and work directories
    (an abrupt exit would leave them behind), then exit 143 at once (an exception could be swallowed
    by library code and leave the process running)."""
    def handler(signum: int, frame: Any) -> None:
        remove_work_dirs()
        if JSON and not cli.EMITTED:  # the user's streams, also while library output is being captured
            user_stdout.write(json.dumps(_error_object("terminated (SIGTERM)", None, "Terminated", 143)) + "\n")
            user_stdout.flush()
        user_stderr.write("edgekit: terminated\n")
        user_stderr.flush()
        os._exit(143)

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (embedded use): leave the default
        pass


def _error_object(message: str, fix: str | None, kind: str, code: int) -> dict:
    return {"error": message, "fix": fix, "type": kind, "exit_code": code}


def _fail(message: str, fix: str | None, kind: str, code: int, text: str | None = None) -> None:
    """Report an error and exit: one JSON object on stdout under --json, else one line on stderr."""
    if DEBUG:
        traceback.print_exc()
    if JSON and not cli.EMITTED:
        cli.emit_json(_error_object(message, fix, kind, code))
    else:  # text mode, or the command's JSON result is already on stdout
        sys.stderr.write((text or f"edgekit: error: {message}" + (f" (fix: {fix})" if fix else "")) + "\n")
    sys.exit(code)


def _global_flags(args: list[str]) -> list[str]:
    """Take --debug / --verbose from anywhere on the line (they are global); note --json."""
    global DEBUG, JSON
    if "--debug" in args:
        DEBUG = True
    DEBUG = DEBUG or os.environ.get("EDGEKIT_DEBUG") == "1"
    if DEBUG or "--verbose" in args:
        os.environ["EDGEKIT_VERBOSE"] = "1"  # core.notices shows third-party output (child processes too)
    JSON = "--json" in args[: args.index("--") if "--" in args else len(args)]
    return [a for a in args if a not in ("--debug", "--verbose")]


def main(argv: list[str] | None = None) -> None:
    import click

    args = _global_flags(list(sys.argv[1:] if argv is None else argv))
    cli.EMITTED.clear()
    _quiet_libraries()
    _terminate_cleanly()
    _register_commands()
    cmd = typer.main.get_command(app)
    try:
        rv = cmd.main(args=args, prog_name="edgekit", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:  # usage: unknown option, missing argument, bad value
        if not JSON:
            e.show()
            sys.exit(e.exit_code)
        where = f"edgekit {e.ctx.command_path.split(' ', 1)[1]} --help" if getattr(e, "ctx", None) and \
            " " in e.ctx.command_path else "edgekit --help"
        _fail(e.format_message(), f"see {where}", "UsageError", e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        _fail("interrupted", None, "Interrupted", 130, text="edgekit: interrupted")
    except EdgekitError as e:
        _fail(getattr(e, "message", str(e)), getattr(e, "hint", None), type(e).__name__, e.exit_code,
              text=f"edgekit: error: {e}")
    except Exception as e:  # a bug, not a user mistake: still one line unless --debug
        if isinstance(e, OSError) and e.filename:  # a path the user named: a file in the way, no permission, disk full
            what = " -> ".join(str(f) for f in (e.filename, e.filename2) if f)
            _fail(f"{e.strerror or type(e).__name__}: {what}", "check the path, its permissions and the free disk "
                  "space", type(e).__name__, 1)
        _fail(f"{type(e).__name__}: {first_line(e)}", "run with --debug for the traceback, and report it",
              "InternalError", 70, text=f"edgekit: internal error: {type(e).__name__}: {first_line(e)} "
              "(run with --debug for the traceback)")
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
