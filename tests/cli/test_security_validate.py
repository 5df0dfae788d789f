"""`edgekit validate` passes only after comparing; `edgekit info` shows every artifact's integrity."""
from __future__ import annotations

import json

from edgekit.exporters.recheck import recheck_bundle

from edgekit.core.bundle import Bundle
from tests.conftest import run_cli
from tests.fixtures.bundles import edit_manifest


def test_validate_json_is_additive_and_passes(digits_bundle):
    r = run_cli("validate", digits_bundle, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["checksums"] == "ok" and d["compared"] == 1 and d["damaged_files"] == {}
    row = d["artifacts"][0]
    assert {"graph", "target", "precision", "status", "result", "backend", "max_abs_err", "tolerance"} <= set(row)
    assert row["result"] == "pass"


def test_validate_fails_when_nothing_could_be_compared(bundle_copy):
    """Backend not installed here is 'skipped' (a separate status), but a run that compared nothing fails."""
    edit_manifest(bundle_copy, lambda m: m["artifacts"][0].update(target="coreml"))
    rows = recheck_bundle(Bundle.load(bundle_copy, verify="used"))["artifacts"]
    assert rows[0]["result"] == "skipped" and rows[0]["skip"] == "backend-unavailable"
    r = run_cli("validate", bundle_copy)
    assert r.returncode == 1 and "skipped" in r.stdout
    assert "no artifact could be compared" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_info_json_lists_integrity(bundle_copy):
    (bundle_copy / "validation" / "main.npz").write_bytes(b"changed")
    r = run_cli("info", bundle_copy, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["artifacts"][0]["integrity"] == "ok"
    assert d["files_integrity"]["validation/main.npz"].startswith("damaged: bundle file 'validation/main.npz' is corrupt")
    assert "warning" in r.stderr
