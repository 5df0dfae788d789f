"""TLS and SuperNode authentication with real Flower processes on loopback (127.0.0.1 only),
through the user-facing CLI: ``edgekit federated server`` (SuperLink + ``flwr run``),
``edgekit federated client`` (SuperNodes) and ``edgekit federated register-node``.

A throwaway CA and a server certificate (SAN: IP 127.0.0.1, DNS localhost) and the SuperNodes'
EC P-384 OpenSSH key pairs are generated with ``cryptography`` into tmp_path. Each test runs a short
edgekit run to its result JSON and checks that the wrong nodes are refused: a SuperNode that trusts
another CA (TLS), an unregistered key and a key-less node (node authentication). Every wait is
bounded; every process started here (and every Flower process serving our ports) is stopped at the
end, and the test fails if one is left."""
from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")
pytest.importorskip("torch")
psutil = pytest.importorskip("psutil")

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

from edgekit.federated import deploy  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("flower-superlink") is None, reason="flwr CLI not installed")

RUN_LIMIT = float(os.environ.get("EDGEKIT_FED_TLS_LIMIT", "240"))  # bound on one run (loaded 2-core CI)
REFUSE_LIMIT = 90.0  # a refused SuperNode exits within this


# ---------------------------------------------------------------- throwaway PKI and node keys

def _cert(subject: str, issuer_key, issuer_name, public_key, *, ca: bool, san=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(issuer_name).public_key(public_key).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                          content_commitment=False, key_encipherment=False,
                                          data_encipherment=False, key_agreement=False, encipher_only=False,
                                          decipher_only=False), critical=True)
    else:
        b = (b.add_extension(x509.SubjectAlternativeName(san), critical=False)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                            critical=False))
    return b.sign(issuer_key, hashes.SHA256())


def _pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_pki(d: Path) -> dict[str, str]:
    """ca.pem, server.pem/server.key (signed by the CA) and other-ca.pem (an unrelated CA)."""
    d.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in ("ca", "other-ca"):
        key = ec.generate_private_key(ec.SECP256R1())
        cn = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"edgekit test {name}")])
        cert = _cert(f"edgekit test {name}", key, cn, key.public_key(), ca=True)
        (d / f"{name}.pem").write_bytes(_pem(cert))
        files[name] = str(d / f"{name}.pem")
        if name == "ca":
            ca_key, ca_cert = key, cert
    key = ec.generate_private_key(ec.SECP256R1())
    san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    cert = _cert("localhost", ca_key, ca_cert.subject, key.public_key(), ca=False, san=san)
    (d / "server.pem").write_bytes(_pem(cert))
    (d / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    files.update(cert=str(d / "server.pem"), key=str(d / "server.key"))
    return files


def make_node_key(d: Path, name: str) -> tuple[str, str]:
    """What `ssh-keygen -t ecdsa -b 384 -N ''` writes: an OpenSSH private key and NAME.pub."""
    key = ec.generate_private_key(ec.SECP384R1())
    (d / name).write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                             serialization.NoEncryption()))
    (d / f"{name}.pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                  serialization.PublicFormat.OpenSSH))
    return str(d / name), str(d / f"{name}.pub")


# ---------------------------------------------------------------- processes

class Procs:
    """The edgekit CLI processes a test starts, and clean-up of everything they started."""

    def __init__(self, tmp: Path):
        self.tmp, self.procs = tmp, {}
        self.link_port = deploy.free_port()  # the SuperLink's port
        self.ports = {self.link_port}  # ours: every Flower process using one of them is ours

    def start(self, name: str, *args) -> subprocess.Popen:
        with open(self.tmp / f"{name}.out", "wb") as out, open(self.tmp / f"{name}.log", "wb") as err:
            p = subprocess.Popen([sys.executable, "-m", "edgekit", "federated", *map(str, args)], stdout=out,
                                 stderr=err, stdin=subprocess.DEVNULL, start_new_session=True,
                                 env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(self.tmp)})
        self.procs[name] = p
        return p

    def log(self, name: str, stream: str = "both") -> str:
        """stderr ("log"), stdout ("out") or both (a SuperNode's own output goes to both)."""
        parts = {"log": ["log"], "out": ["out"], "both": ["out", "log"]}[stream]
        return "".join((self.tmp / f"{name}.{s}").read_text(errors="replace") for s in parts)

    def client(self, name: str, partition: int, *args) -> subprocess.Popen:
        port = deploy.free_port()  # known, so leftovers can be found by their address
        self.ports.add(port)
        return self.start(name, "client", "--superlink", f"127.0.0.1:{self.link_port}", "--partition-id",
                          partition, "--num-partitions", 3, "--port", port, *args)

    def wait_log(self, name: str, pattern: str, timeout: float) -> re.Match:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = re.search(pattern, self.log(name))
            if m:
                return m
            if self.procs[name].poll() is not None:
                m = re.search(pattern, self.log(name))
                if m:
                    return m
                raise AssertionError(f"{name} exited ({self.procs[name].returncode}) before /{pattern}/:\n"
                                     + self.log(name)[-3000:])
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for /{pattern}/ in {name}:\n"
                             + self.log(name)[-3000:])

    def wait_exit(self, name: str, timeout: float) -> int:
        try:
            return self.procs[name].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{name} still runs after {timeout:.0f}s:\n" + self.log(name)[-3000:]) from None

    def _leftovers(self) -> list:
        """Flower processes serving or calling one of our ports (SuperLink, SuperNodes, SuperExecs,
        app processes), and any process still alive that we started."""
        suffixes = tuple(f":{p}" for p in self.ports)
        out = []
        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info["cmdline"] or []
            if any("flower" in c or "flwr" in c for c in cmd[:3]) and any(c.endswith(suffixes) for c in cmd):
                out.append(proc)
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    out.append(psutil.Process(p.pid))
                except psutil.NoSuchProcess:
                    pass
        return out

    def stop_all(self) -> None:
        """SIGTERM the CLI processes (clients first: they stop their SuperNode; the server stops its
        SuperLink), then SIGKILL whatever of ours is left; fail if something survives."""
        for name in sorted(self.procs, key=lambda n: n == "server"):
            p = self.procs[name]
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                deploy._kill_group(p, signal.SIGKILL)  # its group: start_new_session=True
                p.wait(timeout=10)
        # Flower's SuperExecs run in their own sessions and end themselves once their parent is gone
        end = time.monotonic() + 30
        while (left := self._leftovers()) and time.monotonic() < end:
            time.sleep(1)
        for proc in left:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(left, timeout=10)
        left = [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not left, f"Flower processes left after the test: {[p.cmdline() for p in left]}"


def _server_args(tmp: Path, port: int, pki: dict, *extra) -> list:
    return ["server", "--port", port, "--ssl-certfile", pki["cert"], "--ssl-keyfile", pki["key"],
            "--ssl-ca-certfile", pki["ca"], "--method", "cloned", "--max-versions", 2, "--buffer-size", 1,
            "--deadline", 60, "--min-nodes", 2, "--checkpoint-dir", tmp / "ckpt", "--out", tmp / "result.json",
            "--timeout", RUN_LIMIT, "--json", *extra]


def _result(procs: Procs, tmp: Path) -> dict:
    rc = procs.wait_exit("server", RUN_LIMIT + 30)
    assert rc == 0, procs.log("server")[-3000:]
    result = json.loads(procs.log("server", "out"))  # --json: stdout is the result only
    assert result == json.loads((tmp / "result.json").read_text())
    return result


def _superlink_log(procs: Procs) -> str:
    path = procs.wait_log("server", r"SuperLink on \S+ \(log (\S+)\)", 10).group(1)
    return Path(path).read_text(errors="replace")


def _tls_handshake(port: int, cafile: str) -> dict:
    ctx = ssl.create_default_context(cafile=cafile)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            return s.getpeercert()


# ---------------------------------------------------------------- tests

def test_tls_run_completes_and_a_node_trusting_another_ca_is_refused(tmp_path):
    t0 = time.monotonic()
    pki = make_pki(tmp_path / "pki")
    procs = Procs(tmp_path)
    port = procs.link_port
    try:
        procs.start("server", *_server_args(tmp_path, port, pki))
        procs.wait_log("server", r"run \d+ started", 90)  # SuperLink up, `flwr run` accepted over TLS
        # the SuperLink serves our certificate over TLS, and nothing else
        peer = _tls_handshake(port, pki["ca"])
        assert ("IP Address", "127.0.0.1") in peer["subjectAltName"]
        with pytest.raises(ssl.SSLCertVerificationError):
            _tls_handshake(port, pki["other-ca"])
        assert "Uvicorn running on https://127.0.0.1" in _superlink_log(procs)

        # a SuperNode that trusts an unrelated CA: the handshake fails and it exits;
        # one without TLS (--insecure) never gets through and keeps retrying (Flower retries forever)
        procs.client("wrong-ca", 2, "--root-certificates", pki["other-ca"])
        procs.client("plain", 2, "--insecure")
        for i in (0, 1):
            procs.client(f"node{i}", i, "--root-certificates", pki["ca"])
        assert procs.wait_exit("wrong-ca", REFUSE_LIMIT) != 0
        assert "CERTIFICATE_VERIFY_FAILED" in procs.log("wrong-ca")

        result = _result(procs, tmp_path)
        assert result["version"] == 2 and result["accepted"] >= 2
        assert set(result["by_partition"]) <= {"0", "1"}  # partition 2 (the refused nodes) did no work
        for i in (0, 1):
            assert procs.procs[f"node{i}"].poll() is None, procs.log(f"node{i}")[-2000:]
        assert procs.procs["plain"].poll() is None and "Connection attempt failed" in procs.log("plain")
        assert _superlink_log(procs).count("[Fleet.ActivateNode] Activated node_id=") == 2  # node0, node1 only
        print(json.dumps({k: v for k, v in result.items() if k not in ("curve", "config", "model_arrays")}),
              f"test wall time {time.monotonic() - t0:.1f}s")
    finally:
        procs.stop_all()


def test_node_auth_registered_keys_work_unregistered_and_keyless_nodes_are_refused(tmp_path):
    t0 = time.monotonic()
    pki = make_pki(tmp_path / "pki")
    keys = {n: make_node_key(tmp_path / "pki", n) for n in ("node0", "node1", "stranger")}
    procs = Procs(tmp_path)
    port = procs.link_port
    try:
        # node0's key is registered by the server command before the run
        procs.start("server", *_server_args(tmp_path, port, pki, "--enable-supernode-auth",
                                            "--auth-public-key", keys["node0"][1]))
        procs.wait_log("server", r"registered SuperNode \d+", 90)
        procs.wait_log("server", r"run \d+ started", 60)
        # node1's key is registered on the running SuperLink (e.g. a node joining mid-run)
        reg = subprocess.run([sys.executable, "-m", "edgekit", "federated", "register-node", keys["node1"][1],
                              "--superlink", f"127.0.0.1:{port}", "--root-certificates", pki["ca"], "--json"],
                             capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
        assert reg.returncode == 0, reg.stderr
        assert int(json.loads(reg.stdout)["node-id"]) > 0
        again = subprocess.run([sys.executable, "-m", "edgekit", "federated", "register-node", keys["node1"][1],
                                "--superlink", f"127.0.0.1:{port}", "--root-certificates", pki["ca"]],
                               capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
        assert again.returncode == 1 and "edgekit: error: registering" in again.stderr, again.stderr
        assert "Traceback" not in again.stderr

        procs.client("stranger", 2, "--root-certificates", pki["ca"], "--auth-private-key", keys["stranger"][0])
        procs.client("keyless", 2, "--root-certificates", pki["ca"])
        for i in (0, 1):
            procs.client(f"node{i}", i, "--root-certificates", pki["ca"], "--auth-private-key", keys[f"node{i}"][0])
        assert procs.wait_exit("stranger", REFUSE_LIMIT) != 0
        assert "Failed to activate SuperNode" in procs.log("stranger")  # Flower: no node with this key
        assert procs.wait_exit("keyless", REFUSE_LIMIT) != 0
        assert "must be registered" in procs.log("keyless")  # Flower: self-registration is disabled

        result = _result(procs, tmp_path)
        assert result["version"] == 2 and result["accepted"] >= 2
        assert set(result["by_partition"]) <= {"0", "1"}
        for i in (0, 1):
            assert procs.procs[f"node{i}"].poll() is None, procs.log(f"node{i}")[-2000:]
        link_log = _superlink_log(procs)
        assert link_log.count("[Fleet.ActivateNode] Activated node_id=") == 2  # node0, node1 only
        assert "[/v1/fleet/register-node][ApiError:2001]" in link_log  # keyless: self-registration refused
        assert "[/v1/fleet/activate-node][ApiError:2004]" in link_log  # stranger: unknown public key
        print(json.dumps({k: v for k, v in result.items() if k not in ("curve", "config", "model_arrays")}),
              f"test wall time {time.monotonic() - t0:.1f}s")
    finally:
        procs.stop_all()
