"""What edgekit tells the user, and the third-party chatter it keeps from them. Torch-free.

- ``EdgekitWarning``: a choice made for the user (a replaced bundle, a substituted precision). Always
  shown: the CLI prints it as ``edgekit: warning: ...``; Python shows it as a UserWarning.
- ``quiet_noise()``: third-party output (torch FX dumps and FutureWarnings, OpenVINO/coremltools
  progress bars, C-level prints) goes to a temporary file and is dropped, unless ``EDGEKIT_VERBOSE=1``
  (the CLI's ``--verbose`` / ``--debug``). Either way nothing reaches stdout, which carries ``--json``.
- ``user_stderr``: where edgekit's own messages go; it stays the terminal while chatter is captured.
- ``stage_reporter(progress)``: the Python API's progress default (stage lines on stderr when it is a
  terminal; ``progress=False`` silences, a callable receives each stage).
- ``existing_bundle(dest)``: one line saying what a bundle about to be replaced holds.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator


class EdgekitWarning(UserWarning):
    """A choice edgekit made that the user should know about (never silent)."""


def verbose() -> bool:
    """Show third-party output (``--verbose``/``--debug`` set these for the whole process)."""
    return os.environ.get("EDGEKIT_VERBOSE") == "1" or os.environ.get("EDGEKIT_DEBUG") == "1"


_saved: list[tuple[Any, Any]] = []  # the user's (stdout, stderr) while fds 1/2 point at a capture file


class _UserStream(io.TextIOBase):
    """stderr (or stdout) as the user sees it, even while third-party chatter is being captured."""

    def __init__(self, index: int) -> None:
        self.index = index

    def _target(self):
        return _saved[-1][self.index] if _saved else (sys.stdout, sys.stderr)[self.index]

    def write(self, s: str) -> int:
        return self._target().write(s)

    def flush(self) -> None:
        self._target().flush()

    def isatty(self) -> bool:
        try:
            return self._target().isatty()
        except (AttributeError, ValueError):
            return False

    def fileno(self) -> int:
        return self._target().fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._target(), "encoding", None) or "utf-8"


user_stdout, user_stderr = _UserStream(0), _UserStream(1)


def warn(message: str) -> None:
    """An EdgekitWarning attributed to the user's line (the first caller outside edgekit)."""
    level, frame = 2, sys._getframe(1)
    while frame is not None and str(frame.f_globals.get("__name__", "")).startswith("edgekit"):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, EdgekitWarning, stacklevel=level)


@contextlib.contextmanager
def _show_edgekit_warnings() -> Iterator[None]:
    """EdgekitWarnings raised inside a capture still reach the user."""
    orig = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, EdgekitWarning):
            return orig(message, category, filename, lineno, user_stderr, line)
        return orig(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        if warnings.showwarning is show:
            warnings.showwarning = orig


def _is_fd(stream: Any, fd: int) -> bool:
    """Does ``stream`` write to OS file descriptor ``fd`` (a terminal or pipe, not a notebook or pytest's capsys)?"""
    try:
        return stream.fileno() == fd
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False


def _open_fds() -> bool:
    try:
        os.fstat(1)
        os.fstat(2)
        return True
    except OSError:
        return False


def _flush() -> None:
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()


@contextlib.contextmanager
def _fd_moved(src: int, dst: int) -> Iterator[None]:
    """Point fd ``dst`` at what ``src`` points at (C-level output), restore it afterwards."""
    _flush()
    saved = os.dup(dst)
    os.dup2(src, dst)
    try:
        yield
    finally:
        _flush()
        os.dup2(saved, dst)
        os.close(saved)


@contextlib.contextmanager
def quiet_noise() -> Iterator[None]:
    """Capture third-party output (Python and C level) for the duration of the block; drop it unless
    ``verbose()``, which instead sends stdout to stderr (stdout stays clean for --json either way)."""
    if _saved:  # already inside a capture
        yield
        return
    fds = _open_fds()
    if verbose():
        with contextlib.ExitStack() as stack:
            if fds:
                stack.enter_context(_fd_moved(2, 1))
            stack.enter_context(contextlib.redirect_stdout(sys.stderr))
            yield
        return
    # edgekit's own messages (user_stdout/user_stderr) go where stdout/stderr went before the capture
    owned = [os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace") if fds and _is_fd(stream, fd)
             else None for fd, stream in ((1, sys.stdout), (2, sys.stderr))]
    user = (owned[0] or sys.stdout, owned[1] or sys.stderr)
    with tempfile.TemporaryFile() as sink, contextlib.ExitStack() as stack:
        for f in owned:
            if f is not None:
                stack.callback(f.close)
        if fds:
            stack.enter_context(_fd_moved(sink.fileno(), 1))
            stack.enter_context(_fd_moved(sink.fileno(), 2))
        text = stack.enter_context(open(os.dup(sink.fileno()), "w", encoding="utf-8", errors="replace"))
        stack.enter_context(contextlib.redirect_stdout(text))
        stack.enter_context(contextlib.redirect_stderr(text))
        _saved.append(user)
        stack.callback(_saved.remove, user)
        stack.enter_context(_show_edgekit_warnings())
        yield


def stage_reporter(progress: Callable[[str], None] | bool | None) -> Callable[[str], None]:
    """``progress`` as given (a callable), silence (False), or, by default, stage lines on a terminal."""
    if callable(progress):
        return progress
    if progress is None and user_stderr.isatty():
        def say(msg: str) -> None:
            user_stderr.write(f"edgekit: {msg}\n")
            user_stderr.flush()
        return say
    return lambda msg: None


def existing_bundle(dest: Path) -> str | None:
    """What is at ``dest`` now, in a few words (None when nothing is there)."""
    if not dest.exists() and not dest.is_symlink():
        return None
    try:
        mf = dest / "manifest.json"
        if mf.stat().st_size > 16 << 20:
            raise ValueError("manifest too large")
        m = json.loads(mf.read_text())
        arts = sorted({f"{a['target']}/{a['precision']}" for a in m.get("artifacts", [])})
        src = (m.get("metadata") or {}).get("source")
        return (f"bundle {m.get('name', dest.stem)!r} with {len(m.get('artifacts', []))} artifact(s): "
                f"{', '.join(arts) or 'none'}" + (f" (from {src})" if src else ""))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return "something that is not a readable bundle"


def warn_replacing(dest: Path) -> None:
    """Replacing a bundle is never silent."""
    held = existing_bundle(Path(dest))
    if held is not None:
        warn(f"replacing {dest}: it holds {held}")
