"""Deployment mode with real Flower processes on loopback (127.0.0.1 only):
a SuperLink, 3 SuperNodes, the edgekit ServerApp submitted with `flwr run`. Mid-run one client is
SIGKILLed and a new one joins; then the ServerApp process is SIGKILLed and the run is submitted
again: it resumes from the checkpoint and completes. Every process is killed at the end."""
from __future__ import annotations

import json
import os
import shutil
import signal
import time

import pytest

pytest.importorskip("flwr")
pytest.importorskip("torch")
pytest.importorskip("psutil")

from edgekit.federated.server import checkpoint as ckpt  # noqa: E402
from edgekit.federated import deploy, flwr_cli  # noqa: E402
from edgekit.federated.config import FedConfig  # noqa: E402

LIMIT = float(os.environ.get("EDGEKIT_FED_DEPLOY_LIMIT", "420"))  # hard bound on the whole test


def _wait(pred, timeout, what, procs=()):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"process {p.args[:2]} died while waiting for {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _dump_run_logs(run_ids, home, tmp_path):
    import subprocess

    for rid in run_ids:
        try:
            out = subprocess.run(["flwr", "log", str(rid), flwr_cli.CONNECTION, "--show"], capture_output=True,
                                 text=True, timeout=20, env={**os.environ, "FLWR_HOME": str(home)})
            (tmp_path / f"run-{rid}.log").write_text(out.stdout + out.stderr)
            print(f"--- ServerApp log of run {rid} (last 40 lines) ---")
            print("\n".join((out.stdout + out.stderr).splitlines()[-40:]))
        except Exception as err:  # diagnostics only
            print(f"could not fetch the log of run {rid}: {err}")


def _state(d):
    try:
        return ckpt.load(d)
    except ckpt.CheckpointError:
        return None


# In the default run: ~80-90 s on a loaded 2-core machine (Flower starts a process per message);
# every wait is bounded (LIMIT) so a hang fails instead of stalling CI.
@pytest.mark.skipif(shutil.which("flower-superlink") is None, reason="flwr CLI not installed")
def test_real_superlink_supernodes_sigkill_join_and_server_restart(tmp_path):
    # One retry, in a fresh directory with fresh processes: on a loaded 2-core machine one run in
    # ~18 once stalled after its first update (Flower process start-up); both attempts' logs are kept.
    # A second failure fails the test.
    try:
        _deploy_scenario(tmp_path / "attempt1")
    except AssertionError as err:
        print(f"deployment scenario failed once ({err}); retrying with fresh processes")
        _deploy_scenario(tmp_path / "attempt2")


def _deploy_scenario(tmp_path):
    tmp_path.mkdir(parents=True)
    t0 = time.monotonic()
    port = deploy.free_port()
    address = f"127.0.0.1:{port}"
    home = flwr_cli.write_flwr_home(tmp_path / "flwr-home", address)
    env = {"FLWR_HOME": str(home)}
    procs, run_ids = [], []
    try:
        link = deploy.start_superlink(port, log_path=tmp_path / "superlink.log", env=env)
        procs.append(link)
        deploy.wait_listening(link, "127.0.0.1", port, 30)
        nodes = [deploy.start_supernode(address, i, 4, log_path=tmp_path / f"node{i}.log", env=env)
                 for i in range(3)]
        procs += nodes
        ckdir = tmp_path / "ckpt"
        cfg = FedConfig(method="cloned", max_versions=6, buffer_size=2, deadline=40.0, poll=0.3,
                        min_nodes=3, lr=0.1, checkpoint_dir=str(ckdir), out=str(tmp_path / "result.json"))
        app = flwr_cli.write_app_dir(tmp_path / "app", cfg.to_run_config())
        run_ids.append(flwr_cli.submit_run(app, home))

        # 1. two updates accepted -> SIGKILL client 0 (its in-flight clone never returns)
        _wait(lambda: (s := _state(ckdir)) and s.accepted >= 2, LIMIT / 3, "first updates", [link])
        os.killpg(nodes[0].pid, signal.SIGKILL)
        # 2. a new client joins mid-run
        newcomer = deploy.start_supernode(address, 3, 4, log_path=tmp_path / "node3.log", env=env)
        procs.append(newcomer)
        # 3. once the newcomer has contributed, SIGKILL the ServerApp process itself
        _wait(lambda: (s := _state(ckdir)) and s.meta.get("by-partition", {}).get("3", 0) >= 1,
              LIMIT / 3, "an update from the new client", [link, newcomer])
        pids = _wait(lambda: deploy.serverapp_pids(link), 10, "the flwr-serverapp process")
        before = _state(ckdir)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        assert not (tmp_path / "result.json").exists()
        after_kill = _state(ckdir)  # what survived the crash
        assert after_kill.accepted >= before.accepted and after_kill.version >= before.version

        # 4. restart: a new run of the same app resumes from the checkpoint and finishes
        run_ids.append(flwr_cli.submit_run(app, home))
        result = flwr_cli.wait_for_file(tmp_path / "result.json", max(30.0, LIMIT - (time.monotonic() - t0)),
                                      procs=[link])
        assert result["resumed"] is True
        assert result["version"] == cfg.max_versions
        assert result["accepted"] >= after_kill.accepted  # no accepted update lost
        assert result["by_partition"].get("3", 0) >= 1
        assert result["curve"][-1]["acc"] > result["curve"][0]["acc"]
        print(json.dumps({k: v for k, v in result.items() if k != "curve"}),
              f"test wall time {time.monotonic() - t0:.1f}s")
    except BaseException:
        _dump_run_logs(run_ids, home, tmp_path)  # the ServerApp's own log lives in the SuperLink
        raise
    finally:
        for p in reversed(procs):
            deploy.stop(p, timeout=5)
        for p in procs:
            assert p.poll() is not None
