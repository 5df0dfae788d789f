"""The ``edgekit federated server`` run: start a SuperLink (or use one named with --superlink),
register node keys, submit the ServerApp with ``flwr run``, wait for its result, and stop
everything on the way out.

* The SuperLink is ours: the port must be free before it starts, and the run is submitted only
  once *our* process listens there (deploy.wait_listening); it and everything under it die with
  this command, SIGKILL included (lifeline.py).
* ``--out``: the ServerApp writes the result beside it under a temporary name; the previous
  result is replaced only once the new one exists (a failed or interrupted run leaves it as it was).
* While waiting, the command says when no SuperNode is connected (and when nodes are back).
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Callable

from . import deploy, flwr_cli
from .errors import DeployError
from .lifeline import Lifeline
from .server.checkpoint import write_json_atomic


class _NodeWatch:
    """Says when the SuperLink lists no online SuperNode, and when nodes are back."""

    def __init__(self, home: Path, address: str, say: Callable[[str], None]):
        self.home, self.address, self.say, self.last = home, address, say, None

    def __call__(self) -> None:
        n = flwr_cli.online_nodes(self.home)
        if n is None or n == self.last:
            return
        if n == 0:
            self.say("edgekit: no SuperNode is connected to the SuperLink; the run waits (start clients with "
                     f"`edgekit federated client --superlink {self.address} ...`)")
        elif self.last is not None:
            self.say(f"edgekit: {n} SuperNode(s) connected")
        self.last = n


def _failure(err: DeployError, run_id: str, home: Path, work: Path) -> DeployError:
    """The wait's error, with the run's last error and its saved log where there is one."""
    saved = flwr_cli.save_run_log(run_id, home, work / "run.log")
    if saved is None:
        return err
    causes = re.findall(r"^(?:\w+\.)*\w+(?:Error|Exception): .*$", saved.read_text(errors="replace"), re.M)
    why = f"; last error in the run: {causes[-1][:300]}" if causes else ""
    return DeployError(err.message + why, f"the run's log: {saved}")


def run_server(cfg, out: Path, *, superlink: str | None, host: str, port: int, timeout: float, insecure: bool,
               tls: tuple, enable_supernode_auth: bool, auth_public_keys: list, say: Callable[[str], None],
               on_start: Callable[[], None] | None = None) -> dict:
    """Run ``cfg`` (a checked FedConfig) to its result, written to ``out``; returns the result."""
    ssl_certfile, ssl_keyfile, ssl_ca_certfile = tls
    work = Path(tempfile.mkdtemp(prefix="edgekit-fed-"))
    address = superlink or f"{host}:{port}"
    home = flwr_cli.write_flwr_home(work / "flwr-home", address, insecure=insecure, root_certificates=ssl_ca_certfile)
    stage = out.with_name(f".{out.name}.{os.getpid()}.partial")  # the ServerApp's --out
    run_config = {**cfg.to_run_config(), "out": str(stage)}
    lifeline, link, run_id, done = Lifeline(), None, None, False
    if on_start is not None:
        on_start()
    try:
        if superlink is None:
            link = deploy.start_superlink(port, host=host, insecure=insecure, ssl_certfile=ssl_certfile,
                                          ssl_keyfile=ssl_keyfile, ssl_ca_certfile=ssl_ca_certfile,
                                          enable_supernode_auth=enable_supernode_auth,
                                          log_path=work / "superlink.log", env={"FLWR_HOME": str(home)},
                                          lifeline=lifeline)
            deploy.wait_listening(link, host, port, 30)
            say(f"SuperLink on {address} (log {work / 'superlink.log'})")
        for key in auth_public_keys:  # before the run: a keyed SuperNode needs its key registered
            say(f"registered SuperNode {flwr_cli.register_supernode(key, home)} ({key})")
        run_id = flwr_cli.submit_run(flwr_cli.write_app_dir(work / "app", run_config), home)
        say(f"run {run_id} started; waiting for {out}")
        try:
            result = flwr_cli.wait_for_file(stage, timeout, procs=[link] if link else [],
                                            status=lambda: flwr_cli.run_status(run_id, home),
                                            watch=_NodeWatch(home, address, say))
        except DeployError as err:  # keep the run's log before the SuperLink goes away
            raise _failure(err, run_id, home, work) from None
        result["config"]["out"] = str(out)
        write_json_atomic(out, result)  # only now is the previous result replaced
        done = True
        return result
    finally:
        if link is None and run_id is not None and not done:  # a run on someone else's SuperLink
            flwr_cli.stop_run(run_id, home)
        deploy.stop(link, lifeline=lifeline)
        lifeline.close()
        stage.unlink(missing_ok=True)
