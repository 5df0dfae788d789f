"""Deployment mode: real ``flower-superlink`` / ``flower-supernode`` processes, tied to the
command that starts them (the ``flwr`` command line is flwr_cli.py).

Flower 1.41 facts this relies on (read from its source and --help, checked by the tests):
  * SuperLink serves Fleet, Control and Runtime APIs over HTTP on one ``--port`` (default 9093
    here); ``--insecure`` or ``--ssl-certfile/--ssl-keyfile/--ssl-ca-certfile`` for TLS;
    ``--enable-supernode-auth`` for node authentication; we always pass
    ``--disable-runtime-dependency-installation`` (no ``uv sync`` at run time). TLS needs all
    three of certfile, keyfile and CA file (flower-superlink exits otherwise; its own SuperExec
    checks the Runtime API's certificate with that CA), and node auth needs TLS.
  * The SuperLink starts a SuperExec in a session of its own, which starts each ServerApp
    (``flwr-serverapp``); a SuperNode starts a SuperExec in its group, which starts a
    ``flwr-clientapp`` per message. So a process-group kill misses the SuperLink's SuperExec and
    ServerApp: :func:`stop` kills the recorded tree, and lifeline.py does the same when the
    command dies (SIGKILL included).
  * Node authentication (verified on loopback, tests/federated/test_tls.py): a SuperNode started
    with ``--auth-supernode-private-key`` (an unencrypted OpenSSH EC private key, e.g.
    ``ssh-keygen -t ecdsa -b 384``) does not register itself, on any SuperLink: its public key
    (OpenSSH, NIST curve) must first be registered through the Control API with
    ``flwr supernode register KEY.pub CONNECTION``, else activation fails (Flower code 2004) and
    the SuperNode exits. With ``--enable-supernode-auth`` a SuperNode without a key is refused
    (code 2001). A key also requires TLS on the SuperNode (exit code 303 with ``--insecure``).
  * A SuperNode needs ``--superlink HOST:PORT``, its own runtime ``--port`` (default 9094,
    so several on one host need different ports), ``--node-config 'partition-id=0
    num-partitions=3'``; TLS via ``--root-certificates``, auth via
    ``--auth-supernode-private-key``. When the SuperLink it is connected to restarts, it exits
    with code 0 ("terminated gracefully"): :func:`supervise` restarts it (bounded).
"""
from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

from edgekit.core.errors import UsageError

from .errors import DeployError
from .flwr_cli import exe, toml_value
from .lifeline import Lifeline, die_with_parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port_free(host: str, port: int, flag: str = "--port") -> None:
    """UsageError if something already listens on (or holds) ``host:port``: a SuperLink we would
    start there could not bind, and our run must not go to whatever answers instead."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the SuperLink's server binds
        try:
            s.bind((host, port))
        except OSError as err:
            if err.errno in (errno.EADDRINUSE, errno.EACCES):
                raise UsageError(f"{flag} {port}: {host}:{port} is already in use (another SuperLink, or an old one "
                                 "still running?)", f"stop that process, or pass another {flag}") from None
            raise UsageError(f"{flag} {port}: cannot listen on {host}:{port} ({err.strerror})",
                             "check --host and --port") from None


def check_address(address: str, flag: str = "--superlink") -> None:
    """Raise UsageError unless ``address`` is HOST:PORT with a port in 1..65535."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{flag} {address!r} is not HOST:PORT (port 1-65535)", "e.g. 127.0.0.1:9093")


def check_port(port: int, flag: str = "--port", allow_zero: bool = False) -> None:
    if not (0 if allow_zero else 1) <= port < 65536:
        free = "0 (pick a free one) or " if allow_zero else ""
        raise UsageError(f"{flag} {port} is not a TCP port", f"use {free}1-65535")


def require_files(**files: str | os.PathLike | None) -> None:
    """Raise UsageError naming the first given file that does not exist (keyword: option name)."""
    for opt, path in files.items():
        if path and not Path(path).is_file():
            raise UsageError(f"--{opt.replace('_', '-')} {path}: no such file", "check the path")


def _popen(cmd: list[str], log_path: str | os.PathLike | None, env: dict | None,
           lifeline: Lifeline | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own process group, to die with this process (Linux: PDEATHSIG; and the
    ``lifeline`` watchdog, if given); output to ``log_path`` (None: inherit)."""
    out = open(log_path, "ab") if log_path else None
    e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    try:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None, env=e,
                                start_new_session=True, preexec_fn=die_with_parent())
    finally:
        if out is not None:
            out.close()
    if lifeline is not None:
        lifeline.guard(proc.pid)
    return proc


def check_superlink_options(port: int, *, insecure: bool, ssl_certfile: str | None = None,
                            ssl_keyfile: str | None = None, ssl_ca_certfile: str | None = None,
                            enable_supernode_auth: bool = False) -> None:
    """Raise UsageError for SuperLink options flower-superlink would reject (before starting it)."""
    check_port(port)
    if insecure:
        if enable_supernode_auth:
            raise UsageError("--enable-supernode-auth needs TLS, not --insecure",
                             "pass --ssl-certfile, --ssl-keyfile and --ssl-ca-certfile")
        return
    missing = [f"--{n.replace('_', '-')}" for n, v in (("ssl_certfile", ssl_certfile), ("ssl_keyfile", ssl_keyfile),
                                                     ("ssl_ca_certfile", ssl_ca_certfile)) if not v]
    if missing:  # flower-superlink 1.41 exits unless all three are given
        raise UsageError(f"TLS needs --ssl-certfile, --ssl-keyfile and --ssl-ca-certfile (missing {', '.join(missing)})",
                         "the CA file signs the certificate (the SuperLink verifies its own Runtime API "
                         "with it); or pass --insecure")
    require_files(ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, ssl_ca_certfile=ssl_ca_certfile)


KEYGEN_HINT = "make a key pair with: ssh-keygen -t ecdsa -b 384 -N '' -f node-key (node-key, node-key.pub)"


def check_node_key(path: str | os.PathLike, flag: str, *, private: bool) -> None:
    """Raise UsageError unless ``path`` holds what Flower's node authentication loads: an
    unencrypted OpenSSH EC private key (``--auth-supernode-private-key``) or an OpenSSH EC public
    key (``flwr supernode register``; OpenSSH's EC curves, nistp256/384/521, are the NIST ones
    Flower accepts). ``flag`` names the option in messages."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if not Path(path).is_file():
        raise UsageError(f"{flag} {path}: no such file", "check the path; " + KEYGEN_HINT)
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise UsageError(f"{flag} {path}: cannot read it ({err.strerror})", "check the file's permissions") from None
    kind = "private" if private else "public"
    try:
        key = (serialization.load_ssh_private_key(data, None) if private
               else serialization.load_ssh_public_key(data))
    except TypeError:  # cryptography: the key is encrypted and no password was given
        raise UsageError(f"{flag} {path}: the key is encrypted; Flower loads it without a passphrase",
                         "make one without a passphrase (ssh-keygen -N '')") from None
    except (ValueError, UnsupportedAlgorithm) as err:
        raise UsageError(f"{flag} {path}: not an OpenSSH {kind} key ({err})", KEYGEN_HINT) from None
    ec_type = ec.EllipticCurvePrivateKey if private else ec.EllipticCurvePublicKey
    if not isinstance(key, ec_type):
        raise UsageError(f"{flag} {path}: Flower needs an EC (ECDSA) key, got {type(key).__name__}", KEYGEN_HINT)


def start_superlink(port: int, *, host: str = "127.0.0.1", insecure: bool = True,
                    ssl_certfile: str | None = None, ssl_keyfile: str | None = None,
                    ssl_ca_certfile: str | None = None, enable_supernode_auth: bool = False,
                    database: str | None = None, log_path=None, env=None,
                    extra: list[str] | None = None, lifeline: Lifeline | None = None) -> subprocess.Popen:
    check_superlink_options(port, insecure=insecure, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
                            ssl_ca_certfile=ssl_ca_certfile, enable_supernode_auth=enable_supernode_auth)
    cmd = [exe("flower-superlink"), "--host", host, "--port", str(port),
           "--disable-runtime-dependency-installation"]
    if insecure:
        cmd.append("--insecure")
    else:
        cmd += ["--ssl-certfile", ssl_certfile, "--ssl-keyfile", ssl_keyfile]
        if ssl_ca_certfile:
            cmd += ["--ssl-ca-certfile", ssl_ca_certfile]
    if enable_supernode_auth:
        cmd.append("--enable-supernode-auth")
    if database:
        cmd += ["--database", database]
    return _popen(cmd + list(extra or []), log_path, env, lifeline)


def check_supernode_options(superlink: str, partition_id: int, num_partitions: int, *, port: int | None = None,
                            insecure: bool = True, root_certificates: str | None = None,
                            auth_private_key: str | None = None, node_config: dict | None = None) -> None:
    """Raise UsageError for SuperNode options flower-supernode would reject (before starting it)."""
    check_address(superlink)
    check_port(port or 0, allow_zero=True)
    if num_partitions < 1:
        raise UsageError(f"--num-partitions must be >= 1, got {num_partitions}")
    if not 0 <= partition_id < num_partitions:
        raise UsageError(f"--partition-id {partition_id} is outside [0, {num_partitions})",
                         "partition ids run from 0 to --num-partitions - 1")
    require_files(root_certificates=None if insecure else root_certificates,
                  data_path=(node_config or {}).get("data-path"))
    if auth_private_key:
        check_node_key(auth_private_key, "--auth-private-key", private=True)
        if insecure:  # flower-supernode exits (code 303): node authentication needs TLS
            raise UsageError("--auth-private-key needs TLS, not --insecure",
                             "pass --root-certificates (the SuperLink's CA)")


def start_supernode(superlink: str, partition_id: int, num_partitions: int, *, port: int | None = None,
                    insecure: bool = True, root_certificates: str | None = None,
                    auth_private_key: str | None = None, node_config: dict | None = None,
                    log_path=None, env=None, extra: list[str] | None = None,
                    lifeline: Lifeline | None = None) -> subprocess.Popen:
    check_supernode_options(superlink, partition_id, num_partitions, port=port, insecure=insecure,
                            root_certificates=root_certificates, auth_private_key=auth_private_key,
                            node_config=node_config)
    cfg = {"partition-id": int(partition_id), "num-partitions": int(num_partitions), **(node_config or {})}
    cmd = [exe("flower-supernode"), "--superlink", superlink, "--port", str(port or free_port()),
           "--node-config", " ".join(f"{k}={toml_value(v)}" for k, v in cfg.items())]
    if insecure:
        cmd.append("--insecure")
    elif root_certificates:
        cmd += ["--root-certificates", root_certificates]
    if auth_private_key:
        cmd += ["--auth-supernode-private-key", auth_private_key]
    return _popen(cmd + list(extra or []), log_path, env, lifeline)


def _listens(proc: subprocess.Popen, port: int) -> bool | None:
    """Whether ``proc`` or one of its descendants has a listening socket on ``port`` (None: psutil
    cannot tell here)."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        root = psutil.Process(proc.pid)
        for p in [root, *root.children(recursive=True)]:
            conns = p.net_connections("inet") if hasattr(p, "net_connections") else p.connections("inet")
            if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns):
                return True
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return None
    return False


def wait_listening(proc: subprocess.Popen, host: str, port: int, timeout: float = 30.0) -> None:
    """Wait until the SuperLink we started listens on ``port``; DeployError if it exits first or
    if something else answers there (a run must never go to a SuperLink we did not start)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise DeployError(f"flower-superlink exited with code {proc.returncode} before listening on "
                              f"{host}:{port}", "see its log; is the port taken?")
        ours = _listens(proc, port)
        if ours is True:
            return
        if ours is None:  # no way to see sockets here: a connection is the next best sign
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    return
            except OSError:
                pass
        time.sleep(0.2)
    raise DeployError(f"flower-superlink does not listen on {host}:{port} after {timeout:.0f}s", "see its log")


def _tree(proc: subprocess.Popen) -> list:
    try:
        import psutil

        root = psutil.Process(proc.pid)
        return [root, *root.children(recursive=True)]
    except Exception:  # noqa: BLE001 - no psutil, or the process is gone
        return []


def stop(proc: subprocess.Popen | None, timeout: float = 5.0, sig: int = signal.SIGTERM,
         lifeline: Lifeline | None = None) -> None:
    """Stop a process we started with everything under it: its process group (SuperNode's
    SuperExec and ClientApps) and its other descendants (the SuperLink's SuperExec and ServerApps
    run in a session of their own)."""
    if proc is None:
        return
    tree = _tree(proc) if proc.poll() is None else []
    if proc.poll() is None:
        _kill_group(proc, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc, signal.SIGKILL)
            proc.wait(timeout=timeout)
    _kill_group(proc, signal.SIGKILL)  # leftovers in the group
    for p in tree[1:]:
        try:
            p.kill()
        except Exception:  # noqa: BLE001 - gone already
            pass
    if lifeline is not None:
        lifeline.release(proc.pid)


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the group id is the pid: start_new_session=True
    except (ProcessLookupError, PermissionError):
        pass


def supervise(start: Callable[[], subprocess.Popen], *, restarts: int, say: Callable[[str], None],
              what: str, stable: float = 300.0, sleep=time.sleep) -> int:
    """Run the SuperNode ``start()`` returns until it fails or is stopped (KeyboardInterrupt reaches
    the caller); returns the exit code for the command. A SuperNode exits with code 0 when the
    SuperLink it was connected to went away or restarted: it is started again after a growing
    pause (2, 4, ... 30 s), at most ``restarts`` times in a row (a run of ``stable`` seconds resets
    the count); then, or on any non-zero exit (TLS or authentication refused, bad options), the
    command ends non-zero. Every restart is said (``say``)."""
    attempt = 0
    while True:
        t0 = time.monotonic()
        proc = start()
        code = proc.wait()
        if code != 0:
            say(f"the SuperNode exited with code {code} (see its output above)")
            return code
        attempt = 1 if time.monotonic() - t0 >= stable else attempt + 1
        if attempt > restarts:
            say(f"the SuperNode lost {what} {restarts + 1} times in a row; giving up (check that the SuperLink runs "
                "and is reachable, then start the client again)")
            return 1
        delay = min(30.0, 2.0 ** attempt)
        say(f"the SuperNode exited: it lost {what} (it went away or restarted); starting it again in {delay:.0f}s "
            f"(restart {attempt} of at most {restarts})")
        sleep(delay)


def serverapp_pids(superlink: subprocess.Popen) -> list[int]:
    """Pids of ``flwr-serverapp`` processes under this SuperLink (for restart tests)."""
    import psutil

    try:
        kids = psutil.Process(superlink.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for k in kids:
        try:
            if any("flwr-serverapp" in part for part in k.cmdline()[:3]):
                out.append(k.pid)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            pass
    return out


