"""The edgekit command line (``edgekit`` or ``python -m edgekit``).

One module per command group in edgekit/cli/ (each defines ``register(app)``); output helpers in
edgekit/cli/output.py. User mistakes (EdgekitError) print one line and exit non-zero; ``--debug``
shows the traceback.
"""
from __future__ import annotations

import os
import signal
import sys
import traceback
from typing import Any

import typer

from edgekit.cli import backends, export, federated, inspect, ppp, tokengate, vos
from edgekit.core.bundle import remove_work_dirs
from edgekit.core.errors import EdgekitError, first_line

app = typer.Typer(name="edgekit", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Take PyTorch models to edge devices: export, validate, run and benchmark bundles.")
COMMANDS = (export, inspect, backends, federated, ppp, tokengate, vos)
DEBUG = False


def _register_commands() -> None:
    """Add every command group (the bundle commands first in --help, then the features)."""
    for mod in COMMANDS:
        mod.register(app)


def _quiet_libraries() -> None:
    """Keep third-party chatter (torch.onnx registration warnings, deprecations) off the user's screen."""
    import logging
    import warnings

    if not DEBUG:
        warnings.filterwarnings("ignore")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        for name in ("torch", "torch.onnx", "torch._dynamo", "torch.export", "onnxscript", "nncf", "coremltools",
                     "torchao", "executorch"):
            logging.getLogger(name).setLevel(logging.ERROR)


def _terminate_cleanly() -> None:
    """SIGTERM (kill, a job scheduler, docker stop): remove the staged bundle and work directories
    (an abrupt exit would leave them behind), then exit 143 at once (an exception could be swallowed
    by library code and leave the process running)."""
    def handler(signum: int, frame: Any) -> None:
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
