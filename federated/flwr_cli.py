"""The ``flwr`` command line, as the edgekit server uses it: the app directory and connection it
submits a run with (``flwr run``), node registration (``flwr supernode register``), and what it
reads while it waits: a run's status and log (``flwr ls``, ``flwr log``) and the connected
SuperNodes (``flwr supernode list``).

Flower 1.41: ``flwr run APP_DIR CONNECTION`` builds a FAB from APP_DIR (its pyproject.toml needs
[tool.flwr.app] publisher, components serverapp/clientapp, and a config table listing every
run-config key: ``--run-config`` may only override keys listed there) and submits it; CONNECTION is
a named entry of ``$FLWR_HOME/config.toml`` ([superlink.NAME] address, insecure |
root-certificates). Our components are imported from the installed edgekit, so the app directory
holds only pyproject.toml.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .errors import DeployError

CONNECTION = "edgekit"
COMPONENTS = {"serverapp": "edgekit.federated.server.app:app", "clientapp": "edgekit.federated.client:app"}


def exe(name: str) -> str:
    """The path of a Flower executable of this environment."""
    path = shutil.which(name) or str(Path(sys.executable).with_name(name))
    if not Path(path).exists():
        raise DeployError(f"{name} not found", 'pip install "edgekit[federated]" (flwr==1.41.0)')
    return path


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))


def write_app_dir(dest: str | os.PathLike, run_config: dict) -> Path:
    """A Flower app directory whose [tool.flwr.app.config] is ``run_config``."""
    d = Path(dest)
    d.mkdir(parents=True, exist_ok=True)
    cfg = "\n".join(f"{k} = {toml_value(v)}" for k, v in run_config.items())
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
serverapp = "{COMPONENTS['serverapp']}"
clientapp = "{COMPONENTS['clientapp']}"

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


def _flwr(args: list[str], flwr_home: str | os.PathLike, timeout: float) -> subprocess.CompletedProcess:
    """``flwr ARGS`` against the connection written in ``flwr_home`` (raises TimeoutExpired/OSError)."""
    return subprocess.run([exe("flwr"), *args], capture_output=True, text=True, timeout=timeout,
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
                       timeout: float = 60.0) -> str:
    """``flwr supernode register PUBLIC_KEY edgekit``: lets the SuperNode holding the matching
    private key (``--auth-supernode-private-key``) activate; returns its node id. Needed for every
    SuperNode started with a key (with or without ``--enable-supernode-auth``), before it starts:
    an unregistered key fails activation and the SuperNode exits."""
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


def run_status(run_id: str, flwr_home: str | os.PathLike, timeout: float = 30.0) -> str | None:
    """The run's status from ``flwr ls --run-id ID --format json`` ("pending", "running",
    "finished:completed", "finished:failed", ...); None when it cannot be read right now."""
    try:
        p = _flwr(["ls", CONNECTION, "--run-id", str(run_id), "--format", "json"], flwr_home, timeout)
    except (subprocess.TimeoutExpired, OSError):
        return None
    runs = _json_payload(p.stdout).get("runs") or []
    return str(runs[0].get("status")) if runs and runs[0].get("status") else None


def stop_run(run_id: str, flwr_home: str | os.PathLike, timeout: float = 30.0) -> bool:
    """``flwr stop RUN_ID``: end a run on a SuperLink this command did not start (on the way out)."""
    try:
        p = _flwr(["stop", str(run_id), CONNECTION], flwr_home, timeout)
    except (subprocess.TimeoutExpired, OSError):
        return False
    return p.returncode == 0


def online_nodes(flwr_home: str | os.PathLike, timeout: float = 30.0) -> int | None:
    """How many SuperNodes the SuperLink lists as online (``flwr supernode list``); None when it
    cannot be read right now."""
    try:
        p = _flwr(["supernode", "list", CONNECTION, "--format", "json"], flwr_home, timeout)
    except (subprocess.TimeoutExpired, OSError):
        return None
    payload = _json_payload(p.stdout)
    if p.returncode != 0 or not payload.get("success") or not isinstance(payload.get("nodes"), list):
        return None
    return sum(1 for n in payload["nodes"] if isinstance(n, dict) and n.get("status") == "online")


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
                  hint: str = "see the run's log (flwr log RUN_ID) and the SuperLink log",
                  watch=None, watch_every: float = 30.0) -> dict:
    """Wait for the server's result JSON; fail early if a watched process died, or if ``status()``
    (e.g. ``run_status``) says the run finished and, a few polls later, still no result exists
    (the ServerApp crashed: waiting for ``timeout`` would only hide it). ``watch()`` is called
    every ``watch_every`` seconds (e.g. to say that no node is connected)."""
    p = Path(path)
    end = time.monotonic() + timeout
    next_status, finished_at, finished = time.monotonic() + status_every, None, None
    next_watch = time.monotonic() + min(watch_every, 10.0)
    while time.monotonic() < end:
        if watch is not None and time.monotonic() >= next_watch:
            watch()
            next_watch = time.monotonic() + watch_every
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
