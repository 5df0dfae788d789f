"""docs/audit.md is the output of scripts/audit.py for the current case list, and every case there
behaved as the house rules say when it was written."""
from __future__ import annotations

import importlib.util
import re
import sys

from tests.conftest import REPO


def _audit():
    if "edgekit_audit_script" not in sys.modules:  # dataclasses look their module up in sys.modules
        spec = importlib.util.spec_from_file_location("edgekit_audit_script", REPO / "scripts" / "audit.py")
        sys.modules[spec.name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules["edgekit_audit_script"]


def test_audit_doc_is_current_and_clean():
    audit = _audit()
    text = (REPO / "docs" / "audit.md").read_text()
    m = re.match(r"<!-- written by scripts/audit.py; cases (\w+) -->", text)
    assert m and m.group(1) == audit.signature(), "docs/audit.md is stale: run python scripts/audit.py"
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith("| case ")]
    assert len(rows) == len(audit.CASES) >= 30
    assert [r.split(" | ")[0][2:] for r in rows] == [c.id for c in audit.CASES]
    assert all(r.rstrip().endswith("| ok |") for r in rows), [r for r in rows if not r.rstrip().endswith("| ok |")]


def test_audit_verdicts_follow_the_house_rules():
    audit = _audit()
    case = audit.Case("x", "x", ("info",), audit.E, "does not exist")
    good = "edgekit: error: bundle 'n' does not exist (fix: check the path)\n"
    assert audit.verdict(case, 1, "", good)[1] == "ok"
    assert audit.verdict(case, 70, "", "edgekit: internal error: KeyError: 'x'\n")[1].startswith("PROBLEM: exit 70")
    assert "stdout not empty" in audit.verdict(case, 1, "{}", good)[1]
    assert "traceback" in audit.verdict(case, 1, "", "Traceback (most recent call last):\n" + good)[1]
    j = audit.Case("j", "j", ("info",), audit.J, "does not exist")
    obj = '{"error": "bundle does not exist", "fix": "check", "type": "MissingFileError", "exit_code": 1}'
    assert audit.verdict(j, 1, obj, "")[1] == "ok"
    assert audit.verdict(j, 1, "not json", "")[1].startswith("PROBLEM: stdout is not one JSON object")
