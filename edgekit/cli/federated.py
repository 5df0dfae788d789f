"""CLI: ``edgekit federated simulate | server | client | register-node | settings | app``.

The run settings' options (their names, defaults and help) are generated from the settings
dataclasses (edgekit.federated.config / .sim), so ``simulate`` and ``server`` share one source of
defaults; every other setting is reachable with ``--set KEY=VALUE``. Import is light: torch and
flwr are imported where a command needs them (edgekit.cli, which imports this module, inside the
functions).
"""
from __future__ import annotations

import functools
import inspect
import os
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import List, Optional

import typer

from edgekit.cli.output import emit_json, fmt, progress, table
from edgekit.core.errors import UsageError
from edgekit.federated import deploy, flwr_cli
from edgekit.federated import settings as S
from edgekit.federated.config import FedConfig, parse_sets, settings_table
from edgekit.federated.data import FALLBACK_NOTE, is_file_dataset, load_dataset, resolve_dataset
from edgekit.federated.errors import CheckpointError
from edgekit.federated.launch import run_server
from edgekit.federated.lifeline import Lifeline
from edgekit.federated.server import checkpoint as ckpt
from edgekit.federated.sim import SimConfig, simulate

fed = typer.Typer(name="federated", no_args_is_help=True,
                  help="Asynchronous cloned/buffered-distillation edge learning on Flower.")

# the run settings each command sets with an option of its own (--set refuses them there)
SIM_SETTINGS = ("method", "seed", "dataset", "model", "epochs", "lr", "alpha", "buffer_size", "attend", "out")
SERVER_SETTINGS = ("method", "dataset", "model", "epochs", "lr", "max_versions", "max_time", "deadline",
                   "buffer_size", "attend", "min_nodes", "checkpoint_dir", "out")
SIM_ONLY = tuple(f.name for f in fields(SimConfig))
SET_HELP = ("any other run setting as KEY=VALUE, repeatable, e.g. --set ema=0.95 --set ema-warmup=false "
            "--set deadline=40 (FedAvg's round deadline); `edgekit federated settings` lists them all")


def _param(cls, name: str, server: bool) -> inspect.Parameter:
    f = next(f for f in fields(cls) if f.name == name)
    typ = S.types(cls)[name]
    default = f.metadata.get("server_default") if server and f.metadata.get("server_default") else f.default
    decls = [f"--{S.key(name)}/--no-{S.key(name)}"] if typ is bool else [f"--{S.key(name)}"]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[typ] if default is None else typ,
                             default=typer.Option(default, *decls, help=f.metadata.get("help")))


def with_settings(groups: list[tuple[type, tuple[str, ...]]], server: bool = False):
    """Give a command one option per named setting (from its dataclass field: type, default, help);
    the command receives them as one dict, ``settings``."""
    def deco(fn):
        gen = [_param(cls, n, server) for cls, names in groups for n in names]
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(**kw):
            return fn(settings={p.name: kw.pop(p.name) for p in gen}, **kw)

        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in sig.parameters.values() if p.name != "settings"]
        wrapper.__signature__ = sig.replace(parameters=gen + own)
        return wrapper
    return deco


def _reserved(names, **more: str) -> dict[str, str]:
    return {**{n: "--" + S.key(n) for n in names}, **more}


def _sigterm_as_interrupt() -> None:
    """SIGTERM runs the same clean-up as Ctrl-C (stop the Flower processes we started)."""
    import signal

    def _raise(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)


def _warn(msg: str) -> None:
    typer.echo(f"edgekit: warning: {msg}", err=True)


def _curve_table(result: dict) -> None:

    curve = result["curve"]
    pick = curve[::max(1, len(curve) // 15)]
    if curve and pick[-1] is not curve[-1]:
        pick.append(curve[-1])
    rows = [[fmt(p["t"], ".1f"), p["version"], fmt(p["acc"], ".4f"), p["accepted"], fmt(p["bytes"] / 1e6, ".2f")]
            for p in pick]
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


def _check_data_file(dataset: str, seed: int) -> tuple[str, ...]:
    """Read and check a user data file before anything starts (DataError naming the problem);
    returns its warnings. Built-in data sets are not loaded here."""
    return load_dataset(dataset, seed).notes if is_file_dataset(dataset) else ()


@fed.command("simulate")
@with_settings([(FedConfig, SIM_SETTINGS), (SimConfig, SIM_ONLY)])
def simulate_cmd(
    settings: dict,
    set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Virtual-clock simulation (heterogeneous speeds, churn): accuracy-vs-time curve."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import logging

    logging.getLogger("edgekit.federated").setLevel(logging.ERROR)
    sim = SimConfig(**{k: settings.pop(k) for k in SIM_ONLY})  # checked before any data is loaded
    extra = parse_sets(set_, _reserved(SIM_SETTINGS, num_partitions="--clients", max_time="--horizon"))
    out = settings.pop("out")
    if out:
        _check_out(Path(out))
    dataset = settings.pop("dataset")
    ref = resolve_dataset(dataset)
    if dataset == "fashion-mnist" and ref != dataset:  # the library only logs this, and logs are off here
        _warn(FALLBACK_NOTE)
    for note in _check_data_file(ref, settings["seed"]):
        _warn(note)
    if sim.malicious > 0 and round(sim.malicious * sim.clients) == 0:
        _warn(f"--malicious {sim.malicious} x {sim.clients} clients rounds to 0 malicious nodes "
              f"(use more than {0.5 / sim.clients:.3g})")
    if sim.horizon < 400:
        _warn(f"--horizon {sim.horizon:g} is short: a median node needs ~20 units per clone (2 epochs) and churn "
              "sessions last ~horizon/4, so most clones may time out; 1500+ gives meaningful curves")
    with progress(f"simulating {settings['method']} on {sim.clients} clients to t={sim.horizon:g}",
                  quiet=as_json) as st:
        result = simulate(settings.pop("method"), dataset=ref, out=str(out) if out else "", progress=st.update,
                          **{f.name: getattr(sim, f.name) for f in fields(sim)}, **settings, **extra)
    if not result.get("version"):
        _warn(f"no core update happened within --horizon {sim.horizon:g} ({result['accepted']} accepted updates, "
              f"{settings['buffer_size']} needed per core update): raise --horizon or lower --buffer-size")
    if as_json:
        emit_json(result)
        return
    _curve_table(result)
    typer.echo(f"final accuracy {result['final_acc']:.4f} after {result['accepted']} accepted updates "
               f"({result['version']} core versions); rejected {sum(result['rejected'].values())}, "
               f"error replies {result['errors']}, timeouts {result['timeouts']}, "
               f"nodes that left mid-clone {result.get('departed', 0)}, lost replies {result['lost_replies']}")


@fed.command("server")
@with_settings([(FedConfig, SERVER_SETTINGS)], server=True)
def server_cmd(
    settings: dict,
    superlink: Optional[str] = typer.Option(None, help="run on this running SuperLink HOST:PORT instead of starting "
                                            "one (yours: the run is not tied to this command's life)"),
    host: str = typer.Option("127.0.0.1", help="address the started SuperLink listens on"),
    port: int = typer.Option(9093, help="port of the started SuperLink (Fleet + Control API); must be free"),
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
    out, ckdir = Path(settings.pop("out")).resolve(), Path(settings.pop("checkpoint_dir")).resolve()
    # every check before anything is written, started or deleted
    extra = parse_sets(set_, _reserved(SERVER_SETTINGS))
    cfg = FedConfig(**settings, checkpoint_dir=str(ckdir), out=str(out), **extra)
    for note in _check_data_file(cfg.dataset, cfg.seed):  # cfg.dataset: a file's absolute path
        _warn(note)
    if cfg.model != "mlp":  # cnn on features that are not a square image, the user's model
        from edgekit.federated.models import check_run

        check_run(cfg.model, cfg.dataset, cfg.seed)
    if not timeout > 0:
        raise UsageError(f"--timeout must be > 0 seconds, got {timeout}")
    _check_out(out)
    if ckdir.exists() and not ckdir.is_dir():
        raise UsageError(f"--checkpoint-dir {ckdir} is a file", "give a directory")
    st = ckpt.load(ckdir)  # a damaged checkpoint is one clear error now, not a failed run later
    if st is not None and st.method != cfg.method:
        raise CheckpointError(f"checkpoint {ckpt.checkpoint_path(ckdir)} is for method {st.method!r}, "
                              f"not {cfg.method!r}", "use another --checkpoint-dir")
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
    if superlink is None:
        deploy.check_port_free(host, port)
    result = run_server(cfg, out, superlink=superlink, host=host, port=port, timeout=timeout, insecure=insecure,
                        tls=(ssl_certfile, ssl_keyfile, ssl_ca_certfile), enable_supernode_auth=enable_supernode_auth,
                        auth_public_keys=auth_public_key or [], say=lambda m: typer.echo(m, err=True),
                        on_start=_sigterm_as_interrupt)
    if as_json:
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
    restarts: int = typer.Option(10, help="start the SuperNode again at most this many times in a row when it loses "
                                 "the SuperLink (it went away or restarted); then exit non-zero"),
    as_json: bool = typer.Option(False, "--json", help="print the started process as JSON (then run as usual)"),
) -> None:
    """Start a SuperNode (flower-supernode) that runs the edgekit ClientApp; runs until stopped."""
    if not insecure and not root_certificates:
        raise UsageError("a TLS SuperNode needs --root-certificates", "or pass --insecure on a trusted network")
    if restarts < 0:
        raise UsageError(f"--restarts must be >= 0, got {restarts}")
    kw = dict(port=port or None, insecure=insecure, root_certificates=root_certificates,
              auth_private_key=auth_private_key,
              node_config={"data-path": str(data_path.resolve())} if data_path else None)
    deploy.check_supernode_options(superlink, partition_id, num_partitions, **kw)
    if port:
        deploy.check_port_free("127.0.0.1", port)
    lifeline, current = Lifeline(), []

    def start():
        current[:] = [deploy.start_supernode(superlink, partition_id, num_partitions, **kw, lifeline=lifeline)]
        if as_json and len(started) == 0:

            emit_json({"pid": current[0].pid, "superlink": superlink, "partition-id": partition_id})
        started.append(current[0].pid)
        return current[0]

    started: list[int] = []
    _sigterm_as_interrupt()
    code = 0
    try:
        code = deploy.supervise(start, restarts=restarts, say=lambda m: typer.echo(f"edgekit: {m}", err=True),
                                what=f"the SuperLink at {superlink}")
    except KeyboardInterrupt:
        pass
    finally:
        for proc in current:
            deploy.stop(proc, lifeline=lifeline)
        lifeline.close()
    raise typer.Exit(code)


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
    deploy.check_address(superlink)
    deploy.require_files(root_certificates=root_certificates)
    deploy.check_node_key(public_key, "PUBLIC_KEY", private=False)
    with tempfile.TemporaryDirectory(prefix="edgekit-flwr-") as tmp:
        home = flwr_cli.write_flwr_home(tmp, superlink, insecure=False, root_certificates=root_certificates)
        node_id = flwr_cli.register_supernode(public_key, home)
    if as_json:

        emit_json({"node-id": node_id, "public-key": str(public_key), "superlink": superlink})
    else:
        typer.echo(f"registered SuperNode {node_id} ({public_key}) with {superlink}")


@fed.command("settings")
def settings_cmd(as_json: bool = typer.Option(False, "--json", help="print the settings as JSON")) -> None:
    """Every run setting with its type, default and the methods it applies to: the keys `--set` takes
    (and Flower's run config)."""
    rows = settings_table()
    if as_json:

        emit_json(rows)
        return

    table("run settings (--set KEY=VALUE; commands set some with their own options)",
          ["key", "type", "default", "for", "what it does"],
          [[r["key"], r["type"], repr(r["default"]) if isinstance(r["default"], str) else str(r["default"]),
            ",".join(r["for"]), r["help"]] for r in rows])


@fed.command("app")
def app_cmd(
    directory: Path = typer.Argument(..., help="where to write the app (its pyproject.toml)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="a run setting's default in the app, KEY=VALUE"),
) -> None:
    """Write a Flower app directory for `flwr run DIRECTORY CONNECTION` (every run setting listed, so
    `--run-config` can override any of them)."""
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory} is a file", "give a directory")
    cfg = FedConfig(**parse_sets(set_))
    path = flwr_cli.write_app_dir(directory, cfg.to_run_config()) / "pyproject.toml"
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.add_typer(fed, name="federated")
