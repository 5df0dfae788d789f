"""Multi-graph built-ins go through the one `edgekit export` command."""
from __future__ import annotations

import json

import pytest

import edgekit
from edgekit.core.errors import UsageError
from edgekit.models import registry
from tests.conftest import run_cli


def test_gated_ppp_builtin_exports_a_personalizable_bundle(tmp_path):
    b = edgekit.export(registry.get("ppp-fashion-gated"), targets="onnx", out=tmp_path)
    assert {"main", "static"} <= set(b.manifest.graphs)
    assert all(a.status == "ok" for a in b.manifest.artifacts)
    assert "ppp_gates.json" in b.manifest.files


def test_multi_graph_sources_refuse_what_they_cannot_do(tmp_path):
    with pytest.raises(UsageError, match="fp32 only"):
        edgekit.export(registry.get("vos-skip"), targets="onnx", precision="int8", out=tmp_path)
    with pytest.raises(UsageError, match="not coreml"):
        edgekit.export(registry.get("vos-skip"), targets="coreml", out=tmp_path)


def test_pt_that_is_not_a_tokengate_checkpoint(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    r = run_cli("export", tmp_path / "junk.pt", "--target", "onnx", "--out", tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("models", "--json")
    assert {"vos-skip", "ppp-fashion-gated"} <= {m["name"] for m in json.loads(r.stdout)}


def test_bench_and_validate_every_graph_of_a_multi_graph_bundle(tmp_path):
    b = edgekit.export(registry.get("ppp-fashion-gated"), targets="onnx", out=tmp_path)
    r = run_cli("bench", b.root, "--graph", "static", "--iters", "5", "--warmup", "1", "--json", "--no-torch")
    assert r.returncode == 0, r.stderr
    assert [a["graph"] for a in json.loads(r.stdout)["artifacts"]] == ["static"]
    r = run_cli("validate", b.root, "--json")
    assert r.returncode == 0 and {a["graph"] for a in json.loads(r.stdout)["artifacts"]} == {"main", "static"}
