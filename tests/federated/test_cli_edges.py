"""Edge values for ``edgekit federated simulate | server | client``: user mistakes get one clear
line and a non-zero exit (no traceback, nothing started or half-written); legitimate but unusual
values run."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from tests.conftest import run_cli
from tests.federated.helpers import user_error as _user_error

pytest.importorskip("torch")
pytest.importorskip("flwr")

from edgekit.core.errors import DataError, EdgekitError, UsageError  # noqa: E402
from edgekit.federated.config import FedConfig  # noqa: E402


@pytest.mark.parametrize("args, needles", [
    (["--seed", "-1"], ["seed must be in [0, 2**62)", "-1"]),
    (["--alpha", "0"], ["alpha", "must be > 0"]),
    (["--malicious", "0.99"], ["makes all 20 nodes malicious"]),
    (["--horizon", "0"], ["--horizon must be a positive"]),
    (["--horizon", "nan"], ["--horizon must be a positive"]),
    (["--mean-on", "0"], ["--mean-on must be a positive"]),
    (["--mean-off", "-5"], ["--mean-off must be a positive"]),
    (["--method", "fedsgd"], ["method must be one of cloned, fedbuff, fedavg", "fedsgd"]),
])
def test_simulate_rejects_bad_values_with_one_line(args, needles):
    _user_error(run_cli("federated", "simulate", "--horizon", "30", *args, timeout=120), *needles)


def test_simulate_out_that_is_a_directory_fails_before_running(tmp_path):
    _user_error(run_cli("federated", "simulate", "--horizon", "30", "--out", tmp_path, timeout=120),
                "is a directory", "result.json")
    assert list(tmp_path.iterdir()) == []


def test_simulate_bounds_in_the_library():
    from edgekit.federated.sim import check_simulation

    check_simulation(20, 0.97, 10.0)  # 19 of 20 malicious is allowed: one honest node
    check_simulation(1, 0.4, 1.0)
    for bad in [(0, 0.0, 10.0), (20, 0.99, 10.0), (2, 0.75, 10.0), (5, -0.1, 10.0), (5, 0.1, float("inf"))]:
        with pytest.raises(UsageError):
            check_simulation(*bad)
    for kw in [dict(seed=-1), dict(seed=2**62), dict(alpha=0.0), dict(alpha=float("nan")), dict(alpha=float("inf")),
               dict(max_versions=0), dict(max_time=-1.0), dict(min_nodes=-1), dict(dataset="cifar"),
               dict(deadline=float("nan"))]:
        with pytest.raises(UsageError):
            FedConfig(**kw)
    from edgekit.federated.data import dirichlet_partition

    with pytest.raises(DataError, match="finite"):  # numpy's Dirichlet draw is NaN for alpha=inf
        dirichlet_partition(np.arange(20) % 10, 4, float("inf"), seed=0)


def test_huge_seed_trains_instead_of_failing_silently():
    """seed 10**15 overflowed torch's seed inside the ClientApp; the in-process grid's error was
    then retried forever as a 'transient Grid error' and the run ended with 0 updates, exit 0."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from edgekit.federated.client import train_clone
    from edgekit.federated.data import load_dataset
    from edgekit.federated.models import build_model, get_state
    from edgekit.federated.state import state_to_record

    _grid()  # sets up Flower's local task identity, which Message() needs outside a run
    s = load_dataset("digits", 10**15)
    cfg = FedConfig(seed=10**15)
    msg = Message(RecordDict({"arrays": state_to_record(get_state(build_model("mlp", s.in_dim, s.n_classes))),
                              "config": ConfigRecord(cfg.client_config(3))}), dst_node_id=1, message_type="train")
    ctx = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 3},
                  state=RecordDict(), run_config={})
    reply = train_clone(msg, ctx)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert int(reply.content.metric_records["metrics"]["num-examples"]) > 0


def _grid(n=3):
    from edgekit.federated.sim.grid import VirtualGrid
    from edgekit.federated.sim.nodes import make_profiles

    prof = make_profiles(n, seed=0, horizon=400, churn=False, sec_per_example=0.02)
    return VirtualGrid(prof)


def _cfg(**kw):
    return FedConfig(**{**dict(max_versions=2, buffer_size=2, deadline=60.0, poll=1.0, max_time=300.0), **kw})


def test_a_raising_client_is_an_error_reply_in_the_virtual_grid(caplog):
    """As in Flower, an exception in the ClientApp becomes an Error reply (counted, logged), not a
    failed push that the server retries as a SuperLink hiccup."""
    from edgekit.federated.server.loop import AsyncServer

    grid = _grid()

    def boom(msg, context):
        raise RuntimeError("client bug")

    grid.client_fn = boom
    with caplog.at_level(logging.WARNING, logger="edgekit.federated"):
        res = AsyncServer(grid, _cfg()).run()
    assert res["errors"] > 0 and res["accepted"] == 0
    assert "client bug" in caplog.text and "grid push_messages failed" not in caplog.text


def test_a_grid_call_that_always_fails_ends_the_run_even_if_others_work():
    """The failure counter was shared: a working get_node_ids reset it, so a push that always
    failed was retried until max-time. Now each call has its own count."""
    from edgekit.federated.server.loop import AsyncServer

    grid = _grid()

    def push(msgs):
        raise ConnectionError("push always fails")

    grid.push_messages = push
    srv = AsyncServer(grid, _cfg(max_time=100_000.0))
    with pytest.raises(ConnectionError, match="push always fails"):
        srv.run()
    assert srv.elapsed() < 10 * AsyncServer.GRID_ERRORS_MAX


def test_a_user_error_in_a_grid_call_is_not_retried():
    from edgekit.federated.server.loop import AsyncServer

    grid = _grid()
    calls = {"n": 0}

    def push(msgs):
        calls["n"] += 1
        raise DataError("partition 7 is outside [0, 3)")

    grid.push_messages = push
    with pytest.raises(DataError, match="outside"):
        AsyncServer(grid, _cfg()).run()
    assert calls["n"] == 1


def test_result_write_failure_is_a_user_error_and_leaves_no_temporary(tmp_path):
    from edgekit.federated.server.checkpoint import write_json_atomic

    (tmp_path / "afile").write_text("x")
    with pytest.raises(EdgekitError, match="cannot write the result"):
        write_json_atomic(tmp_path / "afile" / "r.json", {"a": 1})
    target = tmp_path / "r.json"
    target.mkdir()
    (target / "keep").write_text("x")  # os.replace onto a non-empty directory fails
    with pytest.raises(EdgekitError, match="cannot write the result"):
        write_json_atomic(target, {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "r.json"]


def test_corrupt_fashion_mnist_is_a_data_error(tmp_path, monkeypatch):
    import gzip

    from edgekit.federated import data

    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        with gzip.open(tmp_path / name, "wb") as fh:
            fh.write(b"junk")
    monkeypatch.setattr(data, "FASHION_DIR", tmp_path)
    with pytest.raises(DataError, match="incomplete or corrupt.*EDGEKIT_FASHION_MNIST"):
        data._raw("fashion-mnist")


def test_missing_fashion_mnist_falls_back_with_a_visible_warning_and_clean_json(tmp_path):
    res = run_cli("federated", "simulate", "--dataset", "fashion-mnist", "--clients", "3", "--horizon", "30",
                  "--json", env={"EDGEKIT_FASHION_MNIST": str(tmp_path / "absent")}, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "falling back to digits" in res.stderr and "EDGEKIT_FASHION_MNIST" in res.stderr
    assert json.loads(res.stdout)["dataset"] == "digits"


def test_fedavg_json_stdout_is_only_json():
    res = run_cli("federated", "simulate", "--method", "fedavg", "--clients", "2", "--horizon", "30",
                  "--json", timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["method"] == "fedavg"


NODE = ["--superlink", "127.0.0.1:9093", "--partition-id", "0", "--num-partitions", "3"]


@pytest.mark.parametrize("args, needles", [
    (["--superlink", "127.0.0.1:notaport", "--partition-id", "0", "--num-partitions", "3"], ["not HOST:PORT"]),
    (["--superlink", "127.0.0.1:9093", "--partition-id", "3", "--num-partitions", "3"], ["--partition-id 3", "[0, 3)"]),
    (["--superlink", "127.0.0.1:9093", "--partition-id", "0", "--num-partitions", "0"], ["--num-partitions must be >= 1"]),
    ([*NODE, "--port", "70000"], ["--port 70000 is not a TCP port"]),
    ([*NODE, "--data-path", "/nonexistent.npz"], ["--data-path /nonexistent.npz: no such file"]),
    ([*NODE, "--auth-private-key", "/nonexistent.key"], ["--auth-private-key /nonexistent.key: no such file"]),
])
def test_client_rejects_bad_arguments_before_starting_a_supernode(args, needles):
    # --json would print the started process and return: an empty stdout means nothing was started
    _user_error(run_cli("federated", "client", *args, "--insecure", "--json", timeout=60), *needles)


def test_client_missing_root_certificate():
    _user_error(run_cli("federated", "client", *NODE, "--root-certificates", "/nonexistent/ca.pem", "--json",
                        timeout=60), "--root-certificates /nonexistent/ca.pem: no such file")


@pytest.mark.parametrize("args, needles", [
    (["--insecure", "--port", "70000"], ["--port 70000 is not a TCP port"]),
    (["--ssl-certfile", "/nonexistent/c.pem", "--ssl-keyfile", "/nonexistent/k.pem", "--ssl-ca-certfile",
      "/nonexistent/ca.pem"], ["--ssl-certfile /nonexistent/c.pem: no such file"]),
    # flower-superlink 1.41 exits unless certfile, keyfile and CA file are all given
    (["--ssl-certfile", "/nonexistent/c.pem", "--ssl-keyfile", "/nonexistent/k.pem"],
     ["TLS needs --ssl-certfile, --ssl-keyfile and --ssl-ca-certfile", "missing --ssl-ca-certfile"]),
    (["--insecure", "--enable-supernode-auth"], ["--enable-supernode-auth needs TLS"]),
    (["--insecure", "--auth-public-key", "/nonexistent/n.pub"], ["--auth-public-key /nonexistent/n.pub: no such file"]),
    (["--insecure", "--superlink", "nonsense"], ["not HOST:PORT"]),
    (["--insecure", "--max-versions", "0"], ["max-versions must be >= 1"]),
    (["--insecure", "--dataset", "cifar"], ["unknown data set 'cifar'"]),
    (["--insecure", "--timeout", "-1"], ["--timeout must be > 0"]),
])
def test_server_rejects_bad_arguments_before_starting_anything(tmp_path, args, needles):
    out = tmp_path / "result.json"
    out.write_text("{}")  # a previous result must survive a rejected command
    # --timeout 5: should a regression start a SuperLink, the command still ends and stops it
    _user_error(run_cli("federated", "server", "--out", out, "--checkpoint-dir", tmp_path / "ck", "--timeout", "5",
                        *args, timeout=60), *needles)
    assert out.read_text() == "{}" and not (tmp_path / "ck").exists()


def test_server_out_directory_and_checkpoint_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    _user_error(run_cli("federated", "server", "--insecure", "--timeout", "5", "--out", tmp_path, timeout=60),
                "is a directory")
    _user_error(run_cli("federated", "server", "--insecure", "--timeout", "5", "--out", tmp_path / "r.json",
                        "--checkpoint-dir", tmp_path / "afile", timeout=60), "is a file")


def test_settings_that_lead_nowhere_are_warned_about():
    """Accepted but useless settings: a malicious fraction that rounds to no attacker, a horizon too
    short for clones to return, a buffer that never fills. The run still completes (exit 0, clean
    JSON on stdout); stderr says what happened and what to change."""
    r = run_cli("federated", "simulate", "--horizon", "100", "--clients", "3", "--malicious", "0.1",
                "--buffer-size", "50", "--json", timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(r.stdout)
    assert d["version"] == 0
    assert "rounds to 0 malicious nodes" in r.stderr
    assert "--horizon 100 is short" in r.stderr
    assert "no core update happened" in r.stderr and "--buffer-size" in r.stderr


def test_server_wait_ends_when_the_run_failed_without_a_result(tmp_path):
    """The server command polls the run's status: a ServerApp that crashed ends the wait at once
    (seen for real: --out on an unwritable path failed at the end, the CLI waited --timeout)."""
    import threading
    import time

    from edgekit.federated import flwr_cli
    from edgekit.federated.errors import DeployError

    t0 = time.monotonic()
    with pytest.raises(DeployError, match=r"the run ended \(finished:failed\)"):
        flwr_cli.wait_for_file(tmp_path / "r.json", 60, poll=0.02, status=lambda: "finished:failed",
                             status_every=0.05, grace=0.2)
    assert time.monotonic() - t0 < 5
    out = tmp_path / "ok.json"
    threading.Timer(0.3, lambda: out.write_text('{"version": 3}')).start()
    assert flwr_cli.wait_for_file(out, 60, poll=0.02, status=lambda: "running", status_every=0.05) == {"version": 3}


def _keys(d):
    """An EC P-384 OpenSSH key pair (what Flower's node auth loads), an RSA one, a PEM (not OpenSSH)
    EC private key and a passphrase-protected one."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    ec_key, rsa_key = ec.generate_private_key(ec.SECP384R1()), rsa.generate_private_key(65537, 2048)
    files = {
        "ec": ec_key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption()),
        "ec.pub": ec_key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH),
        "rsa": rsa_key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption()),
        "rsa.pub": rsa_key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH),
        "pkcs8": ec_key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()),
        "garbage": b"not a key\n",
    }
    try:
        files["encrypted"] = ec_key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH,
                                                  ser.BestAvailableEncryption(b"secret"))
    except Exception:  # cryptography encrypts OpenSSH keys only with bcrypt installed: ask ssh-keygen
        import shutil
        import subprocess

        if shutil.which("ssh-keygen"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "secret", "-f", d / "encrypted"],
                           check=True, timeout=30, stdin=subprocess.DEVNULL)
    for name, data in files.items():
        (d / name).write_bytes(data)
    return {p.name: str(p) for p in d.iterdir()}


def test_client_rejects_unusable_auth_keys_before_starting_a_supernode(tmp_path):
    k = _keys(tmp_path)
    (tmp_path / "ca.pem").write_text("x")  # only its existence is checked before the start
    tls = ["--root-certificates", tmp_path / "ca.pem", "--json"]
    cases = [([*tls, "--auth-private-key", k["garbage"]], ["not an OpenSSH private key"]),
             ([*tls, "--auth-private-key", k["pkcs8"]], ["not an OpenSSH private key"]),
             ([*tls, "--auth-private-key", k["ec.pub"]], ["not an OpenSSH private key"]),
             ([*tls, "--auth-private-key", k["rsa"]], ["needs an EC (ECDSA) key"]),
             (["--insecure", "--json", "--auth-private-key", k["ec"]], ["--auth-private-key needs TLS"])]
    if "encrypted" in k:
        cases.append(([*tls, "--auth-private-key", k["encrypted"]], ["the key is encrypted"]))
    for args, needles in cases:
        _user_error(run_cli("federated", "client", *NODE, *args, timeout=60), *needles)


def test_server_and_register_node_reject_unusable_public_keys(tmp_path):
    k = _keys(tmp_path)
    for key, needle in [(k["garbage"], "not an OpenSSH public key"), (k["ec"], "not an OpenSSH public key"),
                        (k["rsa.pub"], "needs an EC (ECDSA) key")]:
        _user_error(run_cli("federated", "server", "--insecure", "--timeout", "5", "--out", tmp_path / "r.json",
                            "--auth-public-key", key, timeout=60), "--auth-public-key", needle)
        _user_error(run_cli("federated", "register-node", key, "--superlink", "127.0.0.1:9093",
                            "--root-certificates", key, timeout=60), "PUBLIC_KEY", needle)
    _user_error(run_cli("federated", "server", "--insecure", "--timeout", "5", "--out", tmp_path / "r.json",
                        "--auth-public-key", k["ec.pub"], timeout=60), "--auth-public-key needs TLS")
    assert not (tmp_path / "r.json").exists()


def test_register_node_argument_and_connection_errors(tmp_path):
    k = _keys(tmp_path)
    (tmp_path / "ca.pem").write_text("x")
    ca = ["--root-certificates", tmp_path / "ca.pem"]
    _user_error(run_cli("federated", "register-node", tmp_path / "none.pub", "--superlink", "127.0.0.1:9093", *ca,
                        timeout=60), "PUBLIC_KEY", "no such file", "ssh-keygen")
    _user_error(run_cli("federated", "register-node", k["ec.pub"], "--superlink", "nonsense", *ca, timeout=60),
                "not HOST:PORT")
    _user_error(run_cli("federated", "register-node", k["ec.pub"], "--superlink", "127.0.0.1:9093",
                        "--root-certificates", tmp_path / "none.pem", timeout=60), "--root-certificates", "no such file")
    from edgekit.federated.deploy import free_port

    # nothing listens there: Flower's CLI fails at once, and so does the command (one line, exit 1)
    _user_error(run_cli("federated", "register-node", k["ec.pub"], "--superlink", f"127.0.0.1:{free_port()}", *ca,
                        timeout=120), "registering", "failed")
