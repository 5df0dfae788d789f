"""The Flower processes a command starts live and die with it: SIGKILL of ``edgekit federated
server`` or ``client`` leaves no SuperLink, SuperExec, ServerApp, SuperNode or ClientApp behind; a
taken port is refused before anything starts and a run never goes to a SuperLink the command did
not start; a client whose SuperLink went away starts its SuperNode again (bounded, said) or exits
non-zero; the server says when no node is connected. Real processes on 127.0.0.1 only, where the
class needs them; every process found is ours (found by pid from the command down, never by name)."""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("flwr")
psutil = pytest.importorskip("psutil")

from edgekit.federated import deploy  # noqa: E402
from edgekit.federated.errors import DeployError  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from tests.federated.helpers import user_error  # noqa: E402

needs_flower = pytest.mark.skipif(__import__("shutil").which("flower-superlink") is None,
                                  reason="flwr CLI not installed")


def _cli(tmp: Path, name: str, *args) -> subprocess.Popen:
    log = open(tmp / f"{name}.log", "wb")
    try:
        return subprocess.Popen([sys.executable, "-m", "edgekit", "federated", *map(str, args)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally:
        log.close()


def _tree_until(proc: subprocess.Popen, names: tuple[str, ...], timeout: float) -> list:
    """The command's descendants once each of ``names`` runs among them."""
    end = time.monotonic() + timeout
    kids = []
    while time.monotonic() < end:
        assert proc.poll() is None, f"the command exited ({proc.returncode})"
        try:
            kids = psutil.Process(proc.pid).children(recursive=True)
            cmds = " ".join(" ".join(k.cmdline()[:2]) for k in kids)
        except psutil.NoSuchProcess:
            cmds = ""
        if all(n in cmds for n in names):
            return kids
        time.sleep(0.5)
    raise AssertionError(f"not all of {names} started within {timeout:.0f}s: {[k.cmdline()[:2] for k in kids]}")


def _sigkill_leaves_nothing(proc: subprocess.Popen, kids: list) -> None:
    os.kill(proc.pid, signal.SIGKILL)  # the command only, as `kill -9 PID` does
    proc.wait(timeout=10)
    _, alive = psutil.wait_procs(kids, timeout=15)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for p in alive:  # clean up before failing
        p.kill()
    assert not alive, f"left running after SIGKILL: {[p.cmdline()[:3] for p in alive]}"


@needs_flower
def test_sigkill_of_the_server_command_kills_superlink_superexec_and_serverapp(tmp_path):
    port = deploy.free_port()
    proc = _cli(tmp_path, "server", "server", "--insecure", "--port", port, "--max-versions", 50, "--min-nodes", 1,
                "--checkpoint-dir", tmp_path / "ck", "--out", tmp_path / "r.json", "--timeout", 300)
    try:
        kids = _tree_until(proc, ("flower-superlink", "flower-superexec", "flwr-serverapp", "lifeline.py"), 120)
        _sigkill_leaves_nothing(proc, kids)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@needs_flower
def test_sigkill_of_the_client_command_kills_its_supernode(tmp_path):
    port = deploy.free_port()  # nothing listens there: the SuperNode keeps trying to connect
    proc = _cli(tmp_path, "client", "client", "--superlink", f"127.0.0.1:{port}", "--partition-id", 0,
                "--num-partitions", 2, "--insecure")
    try:
        kids = _tree_until(proc, ("flower-supernode", "flower-superexec", "lifeline.py"), 60)
        _sigkill_leaves_nothing(proc, kids)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_taken_port_is_refused_before_anything_starts(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = tmp_path / "r.json"
        user_error(run_cli("federated", "server", "--insecure", "--port", port, "--out", out, "--timeout", "5",
                           timeout=60), f"--port {port}", "already in use")
        user_error(run_cli("federated", "client", "--superlink", "127.0.0.1:9093", "--partition-id", "0",
                           "--num-partitions", "2", "--insecure", "--port", port, timeout=60), "already in use")
    assert not out.exists() and not (tmp_path / "federated-ckpt").exists()


def test_a_run_never_goes_to_a_superlink_we_did_not_start():
    """Our SuperLink must be the one listening: another listener on the port, or our process dying
    first, is an error, not a SuperLink to submit the run to."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            port = s.getsockname()[1]
            with pytest.raises(DeployError, match="does not listen"):
                deploy.wait_listening(sleeper, "127.0.0.1", port, timeout=2)
            with pytest.raises(DeployError, match="exited with code 0"):
                deploy.wait_listening(dead, "127.0.0.1", port, timeout=2)
        listener = subprocess.Popen([sys.executable, "-c", "import socket, sys, time; s = socket.socket(); "
                                     f"s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(60)"])
        try:
            deploy.wait_listening(listener, "127.0.0.1", port, timeout=30)
        finally:
            listener.kill()
    finally:
        sleeper.kill()


def test_a_supernode_that_lost_its_superlink_is_started_again_bounded_and_said():
    said, starts = [], []

    def start(code):
        def run():
            starts.append(1)
            return subprocess.Popen([sys.executable, "-c", f"raise SystemExit({code})"])
        return run

    # exits 0 (what flower-supernode does when its SuperLink restarts): started again, then given up
    rc = deploy.supervise(start(0), restarts=2, say=said.append, what="the SuperLink at h:1", sleep=lambda s: None)
    assert rc == 1 and len(starts) == 3
    assert sum("starting it again" in m for m in said) == 2 and "giving up" in said[-1]
    # a failing SuperNode (TLS or authentication refused): no restart, its code
    said.clear()
    starts.clear()
    assert deploy.supervise(start(3), restarts=5, say=said.append, what="x", sleep=lambda s: None) == 3
    assert len(starts) == 1 and "exited with code 3" in said[0]


def test_the_server_says_when_no_node_is_connected(caplog):
    from edgekit.federated.config import FedConfig
    from edgekit.federated.server.loop import AsyncServer
    from edgekit.federated.sim.grid import VirtualGrid

    with caplog.at_level(logging.WARNING, logger="edgekit.federated"):
        res = AsyncServer(VirtualGrid([]), FedConfig(method="fedbuff", max_time=100.0, poll=1.0, deadline=10.0)).run()
    assert res["version"] == 0
    assert "0 of the 1 nodes asked for" in caplog.text and "no node is connected" in caplog.text
    assert caplog.text.count("no node is connected") <= 100 / AsyncServer.IDLE_WARN_EVERY + 1  # now and then


def test_the_server_command_says_when_nodes_leave_and_return(monkeypatch):
    from edgekit.federated import flwr_cli, launch

    counts = iter([2, 0, 0, None, 3])
    monkeypatch.setattr(flwr_cli, "online_nodes", lambda home: next(counts))
    said: list[str] = []
    watch = launch._NodeWatch(Path("."), "127.0.0.1:9093", said.append)
    for _ in range(5):
        watch()
    assert len(said) == 2 and "no SuperNode is connected" in said[0] and "127.0.0.1:9093" in said[0]
    assert "3 SuperNode(s) connected" in said[1]


@pytest.mark.slow
@needs_flower
def test_after_a_superlink_restart_the_client_rejoins_and_the_run_resumes(tmp_path):
    """Server A and a client; A is stopped mid-run; server B (same port, same checkpoint) starts:
    the client's SuperNode, which exited when its SuperLink went away, is started again, joins B,
    and the resumed run completes."""
    port = deploy.free_port()
    args = ["server", "--insecure", "--port", port, "--max-versions", 4, "--buffer-size", 1, "--min-nodes", 1,
            "--deadline", 60, "--checkpoint-dir", tmp_path / "ck", "--out", tmp_path / "r.json", "--timeout", 400]
    a = _cli(tmp_path, "serverA", *args)
    client = _cli(tmp_path, "client", "client", "--superlink", f"127.0.0.1:{port}", "--partition-id", 0,
                  "--num-partitions", 2, "--insecure")
    try:
        from edgekit.federated.server import checkpoint as ckpt

        end = time.monotonic() + 240
        while not ((st := _load(ckpt, tmp_path / "ck")) and st.version >= 1) and time.monotonic() < end:
            time.sleep(1)
        assert st and st.version >= 1, (tmp_path / "serverA.log").read_text()[-2000:]
        a.send_signal(signal.SIGTERM)
        assert a.wait(timeout=60) != 0
        b = _cli(tmp_path, "serverB", *args)
        assert b.wait(timeout=400) == 0, (tmp_path / "serverB.log").read_text()[-3000:]
        log = (tmp_path / "client.log").read_text(errors="replace")
        assert "starting it again" in log and client.poll() is None
        import json

        result = json.loads((tmp_path / "r.json").read_text())
        assert result["resumed"] and result["version"] == 4
    finally:
        for p in (a, client, locals().get("b")):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)


def _load(ckpt, d):
    try:
        return ckpt.load(d)
    except Exception:  # noqa: BLE001 - mid-write on a slow disk: try again
        return None
