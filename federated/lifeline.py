"""Tie the Flower processes a command starts to the command's own life, even through SIGKILL.

Two mechanisms, both on by default in deploy._popen:

* Linux: each direct child (SuperLink, SuperNode) gets ``prctl(PR_SET_PDEATHSIG, SIGKILL)``
  (:func:`die_with_parent`, a ``preexec_fn``): the kernel kills it when the command dies.
* Everywhere (the only one on macOS, which has no prctl): a watchdog process (this file, run as a
  script by :class:`Lifeline`) holds the read end of a pipe from the command. It records the
  process tree under every guarded child twice a second (Flower's SuperExec runs in a session of
  its own, so a process-group kill misses it and its app processes). When the pipe closes -- the
  command exited, however it died -- the watchdog SIGKILLs the guarded groups and every recorded
  descendant that still runs (matched by pid and start time, never by name), then exits. A clean
  stop releases a child first (``release``), so nothing of a finished run is touched.
Flower's own parent monitors (``--parent-pid``) end the SuperExec and app processes too, within
a second of their parent; the watchdog does not rely on them.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

POLL = 0.5  # seconds between process-tree snapshots


def die_with_parent():
    """A ``preexec_fn`` for Linux: SIGKILL this child when the process that started it dies (None
    elsewhere). If that process is already gone, exit at once."""
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()

    def preexec() -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class Lifeline:
    """The watchdog process for one command (see the module doc). ``guard(pid)`` after starting a
    child in its own process group; ``release(pid)`` once it has been stopped; ``close()`` at the
    end (an exit without close has the same effect: the pipe closes)."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__)], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True, close_fds=True)

    def _send(self, line: str) -> None:
        try:
            self.proc.stdin.write(f"{line}\n".encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass

    def guard(self, pid: int) -> None:
        self._send(f"+{int(pid)}")

    def release(self, pid: int) -> None:
        self._send(f"-{int(pid)}")

    def close(self, timeout: float = 10.0) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _snapshot(roots: dict[int, float], seen: dict[int, float]) -> None:
    """Record (pid -> start time) of every guarded root and its descendants still running."""
    import psutil

    for pid in list(roots):
        try:
            root = psutil.Process(pid)
            if root.create_time() != roots[pid]:
                del roots[pid]
                continue
            for p in [root, *root.children(recursive=True)]:
                seen[p.pid] = p.create_time()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue


def _kill(roots: dict[int, float], seen: dict[int, float]) -> None:
    import psutil

    for pid in roots:  # the group first: what started since the last snapshot is in it
        try:
            if psutil.Process(pid).create_time() == roots[pid]:
                os.killpg(pid, signal.SIGKILL)
        except (psutil.NoSuchProcess, ProcessLookupError, PermissionError):
            pass
    for pid, started in seen.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == started:
                p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def watch(stream) -> None:
    """The watchdog's loop: '+PID' guards PID (a process-group leader), '-PID' releases it and
    what was recorded under it; end of input kills what is still guarded."""
    import select

    import psutil

    roots: dict[int, float] = {}
    seen: dict[int, float] = {}
    fd = stream.fileno()
    buf = b""
    while True:
        ready, _, _ = select.select([fd], [], [], POLL)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                text = line.decode().strip()
                if text[:1] == "+":
                    try:
                        roots[int(text[1:])] = psutil.Process(int(text[1:])).create_time()
                    except (ValueError, psutil.NoSuchProcess):
                        pass
                elif text[:1] == "-":
                    roots.pop(int(text[1:]), None)
                    seen.clear()  # re-recorded below from the roots still guarded
        _snapshot(roots, seen)
    _kill(roots, seen)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C to the terminal is the command's to handle
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    watch(sys.stdin)
