"""CLI: ``edgekit federated simulate | server | client | register-node | settings``.

Import is light: torch / flwr are imported inside the command functions.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import typer

from edgekit.core.errors import UsageError

fed = typer.Typer(name="federated", no_args_is_help=True,
                  help="Asynchronous cloned/buffered-distillation edge learning on Flower.")


def _sigterm_as_interrupt() -> None:
    """SIGTERM runs the same clean-up as Ctrl-C (stop the Flower processes we started)."""
    import signal

    def _raise(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)


def _curve_table(result: dict) -> None:
    from edgekit.cli.output import fmt, table

    curve = result["curve"]
    step = max(1, len(curve) // 15)
    rows = [[fmt(p["t"], ".1f"), p["version"], fmt(p["acc"], ".4f"), p["accepted"],
             fmt(p["bytes"] / 1e6, ".2f")] for p in curve[::step]]
    if curve and rows[-1][1] != curve[-1]["version"]:
        p = curve[-1]
        rows.append([fmt(p["t"], ".1f"), p["version"], fmt(p["acc"], ".4f"), p["accepted"],
                     fmt(p["bytes"] / 1e6, ".2f")])
    table(f"{result['method']} on {result['dataset']}: accuracy vs time", 
          ["time", "version", "accuracy", "accepted", "MB sent"], rows)


def _check_out(path: Path) -> None:
    """--out must name a file in a directory we can create or write (checked before a long run)."""
    if path.is_dir():
        raise UsageError(f"--out {path} is a directory", f"give a file name, e.g. {path / 'result.json'}")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(f"--out {path}: {parent} is not a writable directory", "pass a writable --out path")


MODEL_HELP = ("mlp | cnn | package.module:function | path/to/file.py:function (called as fn(in_dim, n_classes), "
              "returns an nn.Module: (N, in_dim) float32 -> (N, n_classes) logits)")
DATASET_HELP = "digits | fashion-mnist | PATH.npz (x, y[, x_test, y_test]) | PATH.csv (header, label column)"


SET_HELP = ("any other run setting as KEY=VALUE, repeatable, e.g. --set ema=0.95 --set ema-warmup=false "
            "--set deadline=40 (FedAvg's round deadline); `edgekit federated settings` lists them all")


def _check_data_file(dataset: str, seed: int) -> tuple[str, ...]:
    """Read and check a user data file before anything starts (DataError naming the problem);
    returns its warnings. Built-in data sets are not loaded here."""
    from edgekit.federated.data import is_file_dataset, load_dataset

    return load_dataset(dataset, seed).notes if is_file_dataset(dataset) else ()


# FedConfig fields that a command sets with its own option (--set refuses them)
SIM_OPTIONS = {n: "--" + n.replace("_", "-") for n in ("method", "seed", "dataset", "model", "epochs", "lr", "alpha",
                                                        "buffer_size", "attend", "combine", "out")}
SERVER_OPTIONS = {n: "--" + n.replace("_", "-") for n in ("method", "dataset", "model", "epochs", "lr", "max_versions",
                                                           "max_time", "deadline", "buffer_size", "attend", "combine",
                                                           "min_nodes", "checkpoint_dir", "out")}


@fed.command("simulate")
def simulate_cmd(
    method: str = typer.Option("cloned", help="cloned | fedbuff | fedavg"),
    clients: int = typer.Option(20, help="number of simulated nodes"),
    malicious: float = typer.Option(0.0, help="fraction of malicious nodes (label-flip, random-weights, scaled)"),
    seed: int = typer.Option(0),
    dataset: str = typer.Option("digits", help=DATASET_HELP + " (fashion-mnist falls back to digits if absent)"),
    model: str = typer.Option("mlp", help=MODEL_HELP + " (cnn: square grey images, e.g. 8x8 or 28x28)"),
    epochs: int = typer.Option(2, help="local epochs per clone"),
    lr: float = typer.Option(0.05, help="client SGD learning rate"),
    horizon: float = typer.Option(1500.0, help="virtual time budget (a median node needs 10 units per epoch)"),
    alpha: float = typer.Option(0.5, help="Dirichlet non-IID concentration"),
    buffer_size: int = typer.Option(5, help="K updates per core update"),
    attend: float = typer.Option(1.0, help="distillation: attend to teachers (1) vs retain the core (0)"),
    combine: str = typer.Option("mean", help="cloned: distillation target, mean of the teachers | bayes "
                                             "(per-class competence; docs/federated.md)"),
    no_churn: bool = typer.Option(False, "--no-churn", help="all nodes stay online"),
    mean_on: Optional[float] = typer.Option(None, help="churn: mean online period (default horizon/4)"),
    mean_off: Optional[float] = typer.Option(None, help="churn: mean offline period (default horizon/12)"),
    speed_sigma: float = typer.Option(1.0, help="spread of node speeds: log-normal sigma of seconds per example "
                                                "(0: all equally fast)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
    out: Optional[Path] = typer.Option(None, help="also write the result JSON here"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Virtual-clock simulation (heterogeneous speeds, churn): accuracy-vs-time curve."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import logging

    logging.getLogger("edgekit.federated").setLevel(logging.ERROR)
    from edgekit.federated.simulate import check_simulation, simulate

    check_simulation(clients, malicious, horizon)  # before any data is loaded
    if not 0.0 <= speed_sigma < float("inf"):
        raise UsageError(f"--speed-sigma must be >= 0 and finite, got {speed_sigma}", "e.g. 1.0 (the benchmark's)")
    from edgekit.federated.config import parse_sets

    extra = parse_sets(set_, {**SIM_OPTIONS, "num_partitions": "--clients", "max_time": "--horizon"})
    if out:
        _check_out(out)
    from edgekit.federated.data import FALLBACK_NOTE, resolve_dataset

    def warn(msg: str) -> None:
        typer.echo(f"edgekit: warning: {msg}", err=True)

    ref = resolve_dataset(dataset)
    if dataset == "fashion-mnist" and ref != dataset:  # the library only logs this, and logs are off here
        warn(FALLBACK_NOTE)
    for note in _check_data_file(ref, seed):
        warn(note)
    if malicious > 0 and round(malicious * clients) == 0:
        warn(f"--malicious {malicious} x {clients} clients rounds to 0 malicious nodes (use more than {0.5 / clients:.3g})")
    if horizon < 400:
        warn(f"--horizon {horizon:g} is short: a median node needs ~20 units per clone (2 epochs) and churn "
             "sessions last ~horizon/4, so most clones may time out; 1500+ gives meaningful curves")

    result = simulate(method, clients=clients, malicious=malicious, seed=seed, dataset=ref,
                      horizon=horizon, churn=not no_churn, alpha=alpha, buffer_size=buffer_size,
                      attend=attend, combine=combine, mean_on=mean_on, mean_off=mean_off, model=model,
                      epochs=epochs, lr=lr, speed_sigma=speed_sigma, out=str(out) if out else "", **extra)
    if not result.get("version"):
        warn(f"no core update happened within --horizon {horizon:g} ({result['accepted']} accepted updates, "
             f"{buffer_size} needed per core update): raise --horizon or lower --buffer-size")
    if as_json:
        from edgekit.cli.output import emit_json

        emit_json(result)
        return
    _curve_table(result)
    typer.echo(f"final accuracy {result['final_acc']:.4f} after {result['accepted']} accepted updates "
               f"({result['version']} core versions); rejected {sum(result['rejected'].values())}, "
               f"error replies {result['errors']}, timeouts {result['timeouts']}, "
               f"nodes that left mid-clone {result.get('departed', 0)}, "
               f"lost replies {result['lost_replies']}")


@fed.command("server")
def server_cmd(
    method: str = typer.Option("cloned", help="cloned | fedbuff | fedavg"),
    superlink: Optional[str] = typer.Option(None, help="use a running SuperLink HOST:PORT instead of starting one"),
    host: str = typer.Option("127.0.0.1", help="address the started SuperLink listens on"),
    port: int = typer.Option(9093, help="port of the started SuperLink (Fleet + Control API)"),
    dataset: str = typer.Option("digits", help=DATASET_HELP + "; every node reads the same path"),
    model: str = typer.Option("mlp", help=MODEL_HELP + "; every node imports the same reference"),
    epochs: int = typer.Option(2, help="local epochs per clone"),
    lr: float = typer.Option(0.05, help="client SGD learning rate"),
    max_versions: int = typer.Option(20, help="stop after this many core updates (FedAvg: rounds)"),
    max_time: float = typer.Option(0.0, help="stop after this many seconds (0: no limit)"),
    deadline: float = typer.Option(60.0, help="seconds a dispatched clone may take at first; per node "
                                   "it becomes 2x its measured round trip, doubled by each miss (max 8x)"),
    buffer_size: int = typer.Option(5),
    attend: float = typer.Option(1.0),
    combine: str = typer.Option("mean", help="cloned: distillation target, mean | bayes"),
    min_nodes: int = typer.Option(1, help="wait for this many nodes before starting"),
    checkpoint_dir: Path = typer.Option(Path("federated-ckpt"), help="atomic checkpoint; a restart resumes from it"),
    out: Path = typer.Option(Path("federated-result.json"), help="result JSON written when the run ends"),
    timeout: float = typer.Option(3600.0, help="give up waiting for the run after this many seconds"),
    insecure: bool = typer.Option(False, "--insecure", help="no TLS (loopback / trusted networks only)"),
    ssl_certfile: Optional[str] = typer.Option(None, help="SuperLink TLS certificate (passed to flower-superlink)"),
    ssl_keyfile: Optional[str] = typer.Option(None, help="SuperLink TLS key"),
    ssl_ca_certfile: Optional[str] = typer.Option(None, help="CA certificate (flower-superlink; also used by flwr run)"),
    enable_supernode_auth: bool = typer.Option(False, help="only accept SuperNodes whose public key is registered "
                                               "(--auth-public-key, `edgekit federated register-node`); needs TLS"),
    auth_public_key: Optional[List[Path]] = typer.Option(
        None, "--auth-public-key", help="register this SuperNode public key (OpenSSH EC, e.g. ssh-keygen -t ecdsa "
        "-b 384) before the run; repeat per node. Every client started with --auth-private-key needs it"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Start a SuperLink (unless --superlink) and run the edgekit ServerApp on it with `flwr run`."""
    from edgekit.federated import deploy
    from edgekit.federated.config import FedConfig, parse_sets

    out, ckdir = out.resolve(), checkpoint_dir.resolve()
    # every check before anything is written, started or deleted
    extra = parse_sets(set_, SERVER_OPTIONS)
    cfg = FedConfig(method=method, dataset=dataset, model=model, epochs=epochs, lr=lr, max_versions=max_versions,
                    max_time=max_time, deadline=deadline, buffer_size=buffer_size, attend=attend, combine=combine,
                    min_nodes=min_nodes, checkpoint_dir=str(ckdir), out=str(out), **extra)
    for note in _check_data_file(cfg.dataset, cfg.seed):  # cfg.dataset: a file's absolute path
        typer.echo(f"edgekit: warning: {note}", err=True)
    if cfg.model != "mlp":  # cnn on features that are not a square image, the user's model
        from edgekit.federated.usermodel import check_run

        check_run(cfg.model, cfg.dataset, cfg.seed)
    if not timeout > 0:
        raise UsageError(f"--timeout must be > 0 seconds, got {timeout}")
    _check_out(out)
    if ckdir.exists() and not ckdir.is_dir():
        raise UsageError(f"--checkpoint-dir {ckdir} is a file", "give a directory")
    if superlink is None:
        deploy.check_superlink_options(port, insecure=insecure, ssl_certfile=ssl_certfile,
                                       ssl_keyfile=ssl_keyfile, ssl_ca_certfile=ssl_ca_certfile,
                                       enable_supernode_auth=enable_supernode_auth)
    else:
        deploy.check_address(superlink)
        deploy.require_files(ssl_ca_certfile=None if insecure else ssl_ca_certfile)
    for key in auth_public_key or []:
        deploy.check_node_key(key, "--auth-public-key", private=False)
    if auth_public_key and insecure:  # a SuperNode with a private key refuses to connect without TLS
        raise UsageError("--auth-public-key needs TLS, not --insecure",
                         "pass --ssl-certfile, --ssl-keyfile and --ssl-ca-certfile")
    if out.exists():
        out.unlink()
    work = Path(tempfile.mkdtemp(prefix="edgekit-fed-"))
    address = superlink or f"{host}:{port}"
    home = deploy.write_flwr_home(work / "flwr-home", address, insecure=insecure,
                                  root_certificates=ssl_ca_certfile)
    env = {"FLWR_HOME": str(home)}
    link = None
    _sigterm_as_interrupt()
    try:
        if superlink is None:
            link = deploy.start_superlink(port, host=host, insecure=insecure, ssl_certfile=ssl_certfile,
                                          ssl_keyfile=ssl_keyfile, ssl_ca_certfile=ssl_ca_certfile,
                                          enable_supernode_auth=enable_supernode_auth,
                                          log_path=work / "superlink.log", env=env)
            deploy.wait_port(host, port, 30, link)
            typer.echo(f"SuperLink on {address} (log {work / 'superlink.log'})", err=True)
        for key in auth_public_key or []:  # before the run: a keyed SuperNode needs its key registered
            node_id = deploy.register_supernode(key, home, flag="--auth-public-key")
            typer.echo(f"registered SuperNode {node_id} ({key})", err=True)
        app_dir = deploy.write_app_dir(work / "app", cfg.to_run_config())
        run_id = deploy.submit_run(app_dir, home)
        typer.echo(f"run {run_id} started; waiting for {out}", err=True)
        try:
            result = deploy.wait_for_file(out, timeout, procs=[link] if link else [],
                                          status=lambda: deploy.run_status(run_id, home))
        except deploy.DeployError as err:   # keep the run's log before the SuperLink goes away
            saved = deploy.save_run_log(run_id, home, work / "run.log")
            if saved is None:
                raise
            import re
            causes = re.findall(r"^(?:\w+\.)*\w+(?:Error|Exception): .*$", saved.read_text(errors="replace"), re.M)
            why = f"; last error in the run: {causes[-1][:300]}" if causes else ""
            raise deploy.DeployError(err.message + why, f"the run's log: {saved}") from None
    finally:
        deploy.stop(link)
    if as_json:
        from edgekit.cli.output import emit_json

        emit_json(result)
    else:
        _curve_table(result)
        typer.echo(f"final accuracy {result['final_acc']:.4f}, version {result['version']}")


@fed.command("client")
def client_cmd(
    superlink: str = typer.Option(..., help="SuperLink HOST:PORT"),
    partition_id: int = typer.Option(..., help="this node's data partition"),
    num_partitions: int = typer.Option(..., help="how many partitions the data set is split into"),
    port: int = typer.Option(0, help="this SuperNode's local runtime API port (0: pick a free one)"),
    data_path: Optional[Path] = typer.Option(None, help=".npz with x, y to use instead of a partition"),
    insecure: bool = typer.Option(False, "--insecure", help="no TLS"),
    root_certificates: Optional[str] = typer.Option(None, help="CA certificate to verify the SuperLink (TLS)"),
    auth_private_key: Optional[str] = typer.Option(None, help="SuperNode private key for node authentication"),
    as_json: bool = typer.Option(False, "--json", help="print the started process as JSON and return"),
) -> None:
    """Start a SuperNode (flower-supernode) that runs the edgekit ClientApp; runs until stopped."""
    from edgekit.federated import deploy

    if not insecure and not root_certificates:
        raise UsageError("a TLS SuperNode needs --root-certificates", "or pass --insecure on a trusted network")
    node_config = {"data-path": str(data_path.resolve())} if data_path else None
    proc = deploy.start_supernode(superlink, partition_id, num_partitions, port=port or None,
                                  insecure=insecure, root_certificates=root_certificates,
                                  auth_private_key=auth_private_key, node_config=node_config,
                                  log_path=None if not as_json else os.devnull)
    _sigterm_as_interrupt()
    if as_json:
        from edgekit.cli.output import emit_json

        emit_json({"pid": proc.pid, "superlink": superlink, "partition-id": partition_id})
        return
    try:
        while proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        deploy.stop(proc)
    raise typer.Exit(proc.returncode or 0)


@fed.command("register-node")
def register_node_cmd(
    public_key: Path = typer.Argument(..., help="the SuperNode's OpenSSH EC public key (e.g. node-key.pub from "
                                      "ssh-keygen -t ecdsa -b 384 -N '' -f node-key)"),
    superlink: str = typer.Option(..., help="the running SuperLink HOST:PORT"),
    root_certificates: str = typer.Option(..., help="CA certificate to verify the SuperLink (TLS)"),
    as_json: bool = typer.Option(False, "--json", help="print the node id as JSON"),
) -> None:
    """Register a SuperNode's public key with a running SuperLink, so a keyed client can join.

    Runs `flwr supernode register`; a client started with --auth-private-key needs its public key
    registered before it starts, e.g. when it joins mid-run."""
    from edgekit.federated import deploy

    deploy.check_address(superlink)
    deploy.require_files(root_certificates=root_certificates)
    deploy.check_node_key(public_key, "PUBLIC_KEY", private=False)
    with tempfile.TemporaryDirectory(prefix="edgekit-flwr-") as tmp:
        home = deploy.write_flwr_home(tmp, superlink, insecure=False, root_certificates=root_certificates)
        node_id = deploy.register_supernode(public_key, home)
    if as_json:
        from edgekit.cli.output import emit_json

        emit_json({"node-id": node_id, "public-key": str(public_key), "superlink": superlink})
    else:
        typer.echo(f"registered SuperNode {node_id} ({public_key}) with {superlink}")


@fed.command("settings")
def settings_cmd(as_json: bool = typer.Option(False, "--json", help="print the settings as JSON")) -> None:
    """Every run setting with its type and default: the keys `--set` takes (and Flower's run config)."""
    from edgekit.federated.config import settings_table

    rows = settings_table()
    if as_json:
        from edgekit.cli.output import emit_json

        emit_json([{"key": k, "type": t, "default": d, "help": h} for k, t, d, h in rows])
        return
    from edgekit.cli.output import table

    table("run settings (--set KEY=VALUE; commands set some with their own options)",
          ["key", "type", "default", "what it does"],
          [[k, t, repr(d) if isinstance(d, str) else str(d), h] for k, t, d, h in rows])


def register(app: typer.Typer) -> None:
    app.add_typer(fed, name="federated")
