"""Deployment mode: real ``flower-superlink`` / ``flower-supernode`` processes and ``flwr run``.

Flower 1.41 facts this relies on (read from its source and --help):
  * SuperLink serves Fleet, Control and Runtime APIs over HTTP on one ``--port`` (default 9093
    here); ``--insecure`` or ``--ssl-certfile/--ssl-keyfile/--ssl-ca-certfile`` for TLS;
    ``--enable-supernode-auth`` for node authentication; we always pass
    ``--disable-runtime-dependency-installation`` (no ``uv sync`` at run time). TLS needs all
    three of certfile, keyfile and CA file (flower-superlink exits otherwise; its own SuperExec
    checks the Runtime API's certificate with that CA), and node auth needs TLS.
  * Node authentication (verified on loopback, tests/test_federated_tls.py): a SuperNode started
    with ``--auth-supernode-private-key`` (an unencrypted OpenSSH EC private key, e.g.
    ``ssh-keygen -t ecdsa -b 384``) does not register itself, on any SuperLink: its public key
    (OpenSSH, NIST curve) must first be registered through the Control API with
    ``flwr supernode register KEY.pub CONNECTION``, else activation fails (Flower code 2004) and
    the SuperNode exits. With ``--enable-supernode-auth`` a SuperNode without a key is refused
    (code 2001). A key also requires TLS on the SuperNode (exit code 303 with ``--insecure``).
  * A SuperNode needs ``--superlink HOST:PORT``, its own runtime ``--port`` (default 9094,
    so several on one host need different ports), ``--node-config 'partition-id=0
    num-partitions=3'``; TLS via ``--root-certificates``, auth via
    ``--auth-supernode-private-key``. Each message starts a fresh ``flwr-clientapp`` process.
  * ``flwr run APP_DIR CONNECTION`` builds a FAB from APP_DIR (its pyproject.toml needs
    [tool.flwr.app] publisher, components serverapp/clientapp, and a config table) and
    submits it; CONNECTION is a named entry of ``$FLWR_HOME/config.toml``
    ([superlink.NAME] address, insecure | root-certificates).
Our components are ``edgekit.federated.server_app:app`` / ``client_app:app``, imported from the
installed edgekit, so the app directory holds only pyproject.toml.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from edgekit.core.errors import EdgekitError, UsageError

CONNECTION = "edgekit"


class DeployError(EdgekitError):
    """A Flower process could not be started or did not answer."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _exe(name: str) -> str:
    path = shutil.which(name) or str(Path(sys.executable).with_name(name))
    if not Path(path).exists():
        raise DeployError(f"{name} not found", 'pip install "edgekit[federated]" (flwr==1.41.0)')
    return path


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))


def write_app_dir(dest: str | os.PathLike, run_config: dict) -> Path:
    """A Flower app directory whose [tool.flwr.app.config] is ``run_config``."""
    d = Path(dest)
    d.mkdir(parents=True, exist_ok=True)
    cfg = "\n".join(f"{k} = {_toml_value(v)}" for k, v in run_config.items())
    (d / "pyproject.toml").write_text(f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "edgekit-federated"
version = "0.1.0"
description = "edgekit asynchronous cloned/buffered-distillation edge learning"
license = "Apache-2.0"
dependencies = ["flwr==1.41.0"]

[tool.flwr.app]
publisher = "edgekit"

[tool.flwr.app.components]
serverapp = "edgekit.federated.server_app:app"
clientapp = "edgekit.federated.client_app:app"

[tool.flwr.app.config]
{cfg}
""")
    return d


def write_flwr_home(home: str | os.PathLike, address: str, *, insecure: bool = True,
                    root_certificates: str | None = None) -> Path:
    """$FLWR_HOME/config.toml with one SuperLink connection named ``edgekit``."""
    h = Path(home)
    h.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
             f'address = "{address}"']
    if insecure:
        lines.append("insecure = true")
    elif root_certificates:
        lines.append(f'root-certificates = "{Path(root_certificates).resolve()}"')
    (h / "config.toml").write_text("\n".join(lines) + "\n")
    return h


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


def _popen(cmd: list[str], log_path: str | os.PathLike | None, env: dict | None) -> subprocess.Popen:
    """Start ``cmd`` in its own process group; output to ``log_path`` (None: inherit)."""
    out = open(log_path, "ab") if log_path else None
    e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    try:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None, env=e,
                                start_new_session=True)  # own process group: clean kills
    finally:
        if out is not None:
            out.close()


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
                    extra: list[str] | None = None) -> subprocess.Popen:
    check_superlink_options(port, insecure=insecure, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
                            ssl_ca_certfile=ssl_ca_certfile, enable_supernode_auth=enable_supernode_auth)
    cmd = [_exe("flower-superlink"), "--host", host, "--port", str(port),
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
    return _popen(cmd + list(extra or []), log_path, env)


def start_supernode(superlink: str, partition_id: int, num_partitions: int, *, port: int | None = None,
                    insecure: bool = True, root_certificates: str | None = None,
                    auth_private_key: str | None = None, node_config: dict | None = None,
                    log_path=None, env=None, extra: list[str] | None = None) -> subprocess.Popen:
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
    cfg = {"partition-id": int(partition_id), "num-partitions": int(num_partitions), **(node_config or {})}
    cmd = [_exe("flower-supernode"), "--superlink", superlink, "--port", str(port or free_port()),
           "--node-config", " ".join(f"{k}={_toml_value(v)}" for k, v in cfg.items())]
    if insecure:
        cmd.append("--insecure")
    elif root_certificates:
        cmd += ["--root-certificates", root_certificates]
    if auth_private_key:
        cmd += ["--auth-supernode-private-key", auth_private_key]
    return _popen(cmd + list(extra or []), log_path, env)


def wait_port(host: str, port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise DeployError(f"process exited with code {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise DeployError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


def _flwr(args: list[str], flwr_home: str | os.PathLike, timeout: float) -> subprocess.CompletedProcess:
    """``flwr ARGS`` against the connection written in ``flwr_home`` (raises TimeoutExpired/OSError)."""
    return subprocess.run([_exe("flwr"), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "FLWR_HOME": str(flwr_home)})


def _json_payload(stdout: str) -> dict:
    """The JSON object a ``flwr ... --format json`` call prints (after any log lines); {} if none."""
    start = stdout.find("{")
    try:
        return json.loads(stdout[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        return {}


def submit_run(app_dir: str | os.PathLike, flwr_home: str | os.PathLike, timeout: float = 60.0) -> str:
    """``flwr run APP_DIR edgekit --format json``; returns the run id."""
    try:
        p = _flwr(["run", str(app_dir), CONNECTION, "--format", "json"], flwr_home, timeout)
    except subprocess.TimeoutExpired as err:
        raise DeployError(f"flwr run did not return within {timeout:.0f}s") from err
    payload = _json_payload(p.stdout)
    if p.returncode != 0 or not payload.get("success"):
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        raise DeployError(f"flwr run failed: {' | '.join(tail)}",
                          "check that the SuperLink address and TLS options are right")
    return str(payload["run-id"])


def register_supernode(public_key: str | os.PathLike, flwr_home: str | os.PathLike,
                       timeout: float = 60.0, flag: str = "PUBLIC_KEY") -> str:
    """``flwr supernode register PUBLIC_KEY edgekit``: lets the SuperNode holding the matching
    private key (``--auth-supernode-private-key``) activate; returns its node id. Needed for every
    SuperNode started with a key (with or without ``--enable-supernode-auth``), before it starts:
    an unregistered key fails activation and the SuperNode exits."""
    check_node_key(public_key, flag, private=False)
    try:
        p = _flwr(["supernode", "register", str(Path(public_key).resolve()), CONNECTION, "--format", "json"],
                  flwr_home, timeout)
    except subprocess.TimeoutExpired as err:
        raise DeployError(f"flwr supernode register did not return within {timeout:.0f}s") from err
    payload = _json_payload(p.stdout)
    if p.returncode != 0 or not payload.get("success") or not payload.get("node-id"):
        why = payload.get("error-message") or " | ".join((p.stderr or p.stdout).strip().splitlines()[-3:])
        raise DeployError(f"registering {public_key} failed: {' '.join(str(why).split())}",
                          "check the SuperLink address and CA; a key can be registered only once")
    return str(payload["node-id"])


def stop(proc: subprocess.Popen | None, timeout: float = 5.0, sig: int = signal.SIGTERM) -> None:
    """Stop a process we started, and its process group (the SuperExec and app children)."""
    if proc is None:
        return
    if proc.poll() is None:
        _kill_group(proc, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc, signal.SIGKILL)
            proc.wait(timeout=timeout)
    _kill_group(proc, signal.SIGKILL)  # leftovers in the group


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the group id is the pid: start_new_session=True
    except (ProcessLookupError, PermissionError):
        pass


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


def run_status(run_id: str, flwr_home: str | os.PathLike, timeout: float = 30.0) -> str | None:
    """The run's status from ``flwr ls --run-id ID --format json`` ("pending", "running",
    "finished:completed", "finished:failed", ...); None when it cannot be read right now."""
    try:
        p = _flwr(["ls", CONNECTION, "--run-id", str(run_id), "--format", "json"], flwr_home, timeout)
    except (subprocess.TimeoutExpired, OSError):
        return None
    runs = _json_payload(p.stdout).get("runs") or []
    return str(runs[0].get("status")) if runs and runs[0].get("status") else None


def save_run_log(run_id: str, flwr_home: str | os.PathLike, dest: str | os.PathLike,
                 timeout: float = 30.0) -> Path | None:
    """``flwr log RUN_ID --show`` into ``dest`` (while the SuperLink still runs); None if unavailable."""
    try:
        p = _flwr(["log", str(run_id), CONNECTION, "--show"], flwr_home, timeout)
    except (subprocess.TimeoutExpired, OSError):
        return None
    text = (p.stdout or "") + (p.stderr or "")
    if not text.strip():
        return None
    Path(dest).write_text(text)
    return Path(dest)


def wait_for_file(path: str | os.PathLike, timeout: float, procs=(), poll: float = 0.5,
                  status=None, status_every: float = 10.0, grace: float = 5.0,
                  hint: str = "see the run's log (flwr log RUN_ID) and the SuperLink log") -> dict:
    """Wait for the server's result JSON; fail early if a watched process died, or if ``status()``
    (e.g. ``run_status``) says the run finished and, a few polls later, still no result exists
    (the ServerApp crashed: waiting for ``timeout`` would only hide it)."""
    p = Path(path)
    end = time.monotonic() + timeout
    next_status, finished_at, finished = time.monotonic() + status_every, None, None
    while time.monotonic() < end:
        if p.exists():
            return json.loads(p.read_text())
        for proc in procs:
            if proc.poll() is not None:
                raise DeployError(f"a Flower process exited (code {proc.returncode}) before the run ended")
        now = time.monotonic()
        if finished_at is not None and now - finished_at > grace:
            raise DeployError(f"the run ended ({finished}) without writing {p}", hint)
        if status is not None and finished_at is None and now >= next_status:
            finished = status()
            next_status = now + status_every
            if finished and finished.startswith("finished"):
                finished_at = now            # grace: the result may still be landing
        time.sleep(poll)
    raise DeployError(f"no result at {p} after {timeout:.0f}s", "see the SuperLink log")
