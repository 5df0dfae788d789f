"""Re-checking a bundle where it will run (``edgekit validate``): integrity of every file, then every
artifact runnable here against the PyTorch reference outputs stored at export time. Torch-free.

Each artifact gets one result: ``pass``; ``FAIL`` (outputs differ, it cannot be loaded although its
backend is installed, or its graph has no intact reference outputs); ``damaged`` (checksum, missing
or unsafe file: never run); ``failed at export``; ``skipped`` (its backend is not installed here, or
it awaits a build). The bundle passes only when nothing failed and at least one artifact was compared.
"""
from __future__ import annotations

from typing import Any

from edgekit.exporters.validate import compare, run_cases
from edgekit.runtimes import Session, backend_class
from edgekit.runtimes.bench import backend_for

from edgekit.core.bundle import Artifact, Bundle
from edgekit.core.errors import BackendUnavailableError, EdgekitError
from edgekit.core.inputs import load_validation

BAD = ("FAIL", "damaged", "failed at export")


def _backend(a: Artifact) -> tuple[str | None, str | None]:
    """(backend name, None) when the artifact's backend can run here, else (None, why it is skipped)."""
    name = backend_for(a.target)
    if name is None:
        return None, f"no runtime backend runs {a.target} artifacts"
    try:
        cls = backend_class(name)
    except BackendUnavailableError as e:
        return None, f"backend not installed: {e.message}"
    if not cls.available():
        problem, fix = cls.unavailable_reason()
        return None, f"backend not installed here: {problem} ({fix})"
    return name, None


def _run_one(bundle: Bundle, a: Artifact, name: str, refs: dict, row: dict) -> None:
    got = refs.get(a.graph)
    if got is None:
        try:
            got = refs[a.graph] = load_validation(bundle, a.graph)
        except EdgekitError as e:
            got = refs[a.graph] = e
    if isinstance(got, EdgekitError):
        row.update(result="FAIL", reason=f"no reference outputs: {got.message}")
        return
    feeds, ref = got
    g = bundle.graph(a.graph)
    try:  # this very artifact (not the first of its kind); stored examples may hold NaN/inf on purpose
        sess = Session(backend_class(name)(bundle.path(a), a, g), g.inputs, g.outputs, a, allow_nonfinite=True)
    except EdgekitError as e:
        row.update(result="FAIL", backend=name, reason=f"cannot be loaded although {name} is installed: {e.message}")
        return
    classifier = bundle.manifest.metadata.get("task") == "classification"
    v = compare([ref], run_cases(sess.run, [feeds]), a.precision, classifier)
    row.update(result="pass" if v.passed else "FAIL", max_abs_err=v.max_abs_err, tolerance=v.tolerance,
               backend=name, compared=True, **({"reason": v.detail["mismatch"][0]} if v.detail.get("mismatch") else {}))


def recheck_bundle(bundle: Bundle) -> dict[str, Any]:
    """{"artifacts": rows, "damaged_files": {path: why}, "compared": n, "failed": n}."""
    integrity = bundle.integrity()
    refs: dict[str, Any] = {}
    rows = []
    for a in bundle.manifest.artifacts:
        row: dict[str, Any] = {"graph": a.graph, "target": a.target, "precision": a.precision, "status": a.status}
        rows.append(row)
        if a.status == "failed":
            row.update(result="failed at export", reason=a.status_reason or "")
            continue
        if a.status == "pending-build":
            row.update(result="skipped", reason="awaits a build on the target", skip="pending-build")
            continue
        why = integrity.get(a.path)
        if why:
            row.update(result="damaged", reason=why)
            continue
        name, skip = _backend(a)
        if name is None:
            row.update(result="skipped", reason=skip, skip="backend-unavailable")
            continue
        _run_one(bundle, a, name, refs, row)
    paths = {a.path for a in bundle.manifest.artifacts}
    damaged_files = {rel: why for rel, why in integrity.items() if why and rel not in paths}
    return {"artifacts": rows, "damaged_files": damaged_files,
            "compared": sum(1 for r in rows if r.get("compared")),
            "failed": sum(1 for r in rows if r["result"] in BAD) + len(damaged_files)}
