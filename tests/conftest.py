"""Shared fixtures: one exported default bundle per session, helpers to run the CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "2")


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 300):
    """Run ``python -m edgekit ARGS`` in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "edgekit", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory) -> Path:
    """The embedded default model exported to ONNX with a dynamic batch axis."""
    import edgekit
    from edgekit.models import registry

    out = tmp_path_factory.mktemp("bundles")
    return edgekit.export(registry.get("digits-cnn"), targets="onnx", out=out).root


@pytest.fixture(scope="session")
def executorch_bundle(tmp_path_factory) -> Path:
    """The embedded default exported by the CLI to ExecuTorch at fp32 and int8 (dynamic batch)."""
    pytest.importorskip("executorch")
    out = tmp_path_factory.mktemp("executorch")
    r = run_cli("export", "-t", "executorch", "-p", "fp32,int8", "--no-bench", "--out", out, "--json", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return out / "digits-cnn.edgekit"


@pytest.fixture()
def bundle_copy(digits_bundle, tmp_path) -> Path:
    import shutil

    dst = tmp_path / digits_bundle.name
    shutil.copytree(digits_bundle, dst)
    return dst


@pytest.fixture()
def no_torch_env(tmp_path) -> dict:
    """Environment in which `import torch` fails (a shim package that raises ImportError)."""
    shim = tmp_path / "shim" / "torch"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('torch is deliberately unavailable in this test')\n")
    return {"PYTHONPATH": os.pathsep.join([str(shim.parent), str(REPO), os.environ.get("PYTHONPATH", "")])}


def assert_user_error(res, *needles: str) -> None:
    """A CLI user mistake: exit 1, no traceback, and one error naming every needle: the last stderr line
    'edgekit: error: ...' with nothing on stdout, or, under --json, one JSON object {"error", "fix", ...}
    on stdout and nothing but notices on stderr."""
    import json

    assert res.returncode == 1, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr
    if "--json" in res.args:
        err = json.loads(res.stdout)
        assert err["exit_code"] == 1 and err["type"], err
        line = f"{err['error']} (fix: {err['fix']})" if err.get("fix") else err["error"]
    else:
        assert res.stdout == ""
        line = res.stderr.strip().splitlines()[-1]
        assert line.startswith("edgekit: error: "), res.stderr
    for n in needles:
        assert n in line, (n, line)


@pytest.fixture(scope="session")
def mixed_bundle(digits_bundle, tmp_path_factory) -> Path:
    """The default bundle plus an OpenVINO IR directory artifact converted from its ONNX file (no export)."""
    pytest.importorskip("openvino")
    from tests.fixtures.bundles import add_openvino_ir, copy

    b = copy(digits_bundle, tmp_path_factory.mktemp("mixed"))
    add_openvino_ir(b)
    return b
