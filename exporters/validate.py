"""The one validation routine: run an artifact on validation cases and compare with the reference.

Cases are the example inputs plus random inputs drawn like them (same value range; integer inputs
take values seen in the example, so token ids and masks stay valid), at other sizes on every
dynamic axis; int8 artifacts are also judged on held-out calibration samples, and graphs whose trace
baked in Python control flow on the example at other magnitudes. How each precision is judged (error
relative to each output's own scale; top-1/top-5 agreement for class scores; SQNR and cosine
otherwise) is data: targets.JUDGES. Torch is not needed here; the reference outputs come from the caller.
"""
from __future__ import annotations

import platform
from dataclasses import asdict
from typing import Any, Callable

import numpy as np
from edgekit.exporters.metrics import OutputStats, normalize_task, output_role, padding_mask
from edgekit.exporters.targets import HOLDOUT, HOLDOUT_MIN, JUDGES, MAGNITUDES, SCALE_FLOOR, Judge

from edgekit.core.bundle import Validation
from edgekit.core.errors import first_line

EVIDENCE_CALIB = 16  # calibration samples a traced graph is also checked on
MIN_JUDGED = 100     # fewer judged int8 samples than this: noted as weak (top-1 agreement from n samples has a
# 95 % interval of about +-2 sqrt(p(1-p)/n): +-0.10 at n = 32, +-0.06 at n = 100, around p = 0.9)


def _other_sizes(e: int) -> list[int]:
    return [e + 1, 2 * e] if e <= 64 else [(3 * e) // 4]


def _draw(a: np.ndarray, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    if a.dtype.kind == "f":
        mu, sd = float(a.mean()), float(a.std()) or 1.0
        return rng.normal(mu, sd, size=shape).astype(a.dtype)
    values = np.unique(a)
    return rng.choice(values, size=shape).astype(a.dtype)


def make_cases(example: dict[str, np.ndarray], dynamic: dict | None, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Example + one random same-size case + random cases at other sizes of each dynamic symbol."""
    rng = np.random.default_rng(seed)
    cases = [dict(example), {n: _draw(a, a.shape, rng) for n, a in example.items()}]
    symbols: dict[str, int] = {}
    for n, axes in (dynamic or {}).items():
        for ax, sym in axes.items():
            symbols.setdefault(sym, example[n].shape[int(ax)])
    for sym, e in symbols.items():
        for size in _other_sizes(e):
            case = {}
            for n, a in example.items():
                shape = list(a.shape)
                for ax, s in (dynamic or {}).get(n, {}).items():
                    if s == sym:
                        shape[int(ax)] = size
                case[n] = _draw(a, tuple(shape), rng)
            cases.append(case)
    return cases


def magnitude_cases(example: dict[str, np.ndarray], scales: tuple[float, ...] = MAGNITUDES) -> list[dict]:
    """The example with its float inputs multiplied by each scale (integer inputs kept): inputs that take a
    trace's baked-in Python branches / loop counts elsewhere than the example does."""
    floats = [n for n, a in example.items() if a.dtype.kind == "f"]
    if not floats:
        return []
    return [{n: (a * np.asarray(s, a.dtype)).astype(a.dtype) if n in floats else a for n, a in example.items()}
            for s in scales]


def split_holdout(samples: list[dict] | None) -> tuple[list[dict] | None, list[dict], str]:
    """(calibrate on, judge on, how): the last HOLDOUT share of a calibration set of >= HOLDOUT_MIN samples
    is held out of calibration and judged on; a smaller set is used for both (and said so)."""
    if not samples:
        return samples, [], "no calibration data"
    n = len(samples)
    if n < HOLDOUT_MIN:
        return samples, list(samples), f"all {n} calibration samples (too few to hold any out; also calibrated on)"
    k = max(2, int(round(n * HOLDOUT)))
    return samples[:n - k], samples[n - k:], f"the last {k} of {n} calibration samples (held out of calibration)"


def _finite_check(i: int, name: str, r64: np.ndarray, g64: np.ndarray, mismatch: list[str]) -> tuple[np.ndarray, bool]:
    """Mask of values finite on both sides; NaN/inf in the reference (log of 0, -inf attention masks) must
    be matched exactly and kept out of the scale (one inf would make the tolerance inf and pass anything)."""
    fr, fg = np.isfinite(r64), np.isfinite(g64)
    same = (np.isnan(r64) & np.isnan(g64)) | (~fr & ~np.isnan(r64) & (r64 == g64))
    lost, changed = fr & ~fg, ~fr & ~same
    if lost.any():
        mismatch.append(f"case {i} output {name}: {int(lost.sum())} NaN/inf values where PyTorch's are finite")
    if changed.any():
        mismatch.append(f"case {i} output {name}: {int(changed.sum())} values differ where PyTorch's are NaN/inf")
    return fr & fg, bool(lost.any() or changed.any())


def compare(refs: list[dict[str, np.ndarray]], gots: list, precision: str, task: Any = None, where: str = "",
            judged: list[int] | None = None, cases: list[dict] | None = None) -> Validation:
    """Judge ``gots`` (an artifact's outputs per case, or the exception a case raised) against PyTorch's
    ``refs`` by the precision's Judge (targets.JUDGES). ``task``: "auto" (default), "classification",
    "embedding", "regression" (True = classification). ``judged``: indices of the cases the int8 metrics
    are computed on (default: all); every case must run, match shapes and keep NaN/inf where PyTorch does.
    ``cases`` (the inputs): a [batch, seq] attention mask among them limits the int8 metrics of
    [batch, seq, ...] outputs to the real tokens."""
    task = normalize_task(task)
    judge = JUDGES[precision]
    judged_set = set(range(len(refs)) if judged is None else judged)
    first = next((r for r in refs if r), {})
    roles = {n: output_role(n, r, task) for n, r in first.items()}
    stats = {n: OutputStats(role) for n, (role, _why) in roles.items()}
    err = dict.fromkeys(roles, 0.0)
    scale = dict.fromkeys(roles, 0.0)
    mismatch: list[str] = []
    for i, (ref, got) in enumerate(zip(refs, gots)):
        if isinstance(got, BaseException):  # the artifact raised on this case (see run_cases)
            mismatch.append(f"case {i}: {got}")
            continue
        for name, r in ref.items():
            g = got.get(name)
            if g is None or np.shape(g) != np.shape(r):
                mismatch.append(f"case {i} output {name}: shape {None if g is None else list(np.shape(g))} "
                                f"!= reference {list(np.shape(r))}")
                continue
            r64, g64 = np.asarray(r, np.float64), np.asarray(g, np.float64)
            both, bad = _finite_check(i, name, r64, g64, mismatch)
            fr = np.isfinite(r64)
            e = float("inf") if bad else float(np.abs(r64[both] - g64[both]).max()) if both.any() else 0.0
            err[name] = max(err.get(name, 0.0), e)
            scale[name] = max(scale.get(name, 0.0), float(np.abs(r64[fr]).max()) if fr.any() else 0.0)
            if i in judged_set and name in stats:
                stats[name].add(r64, g64, padding_mask(cases[i]) if cases else None)
    outputs = {}
    for n in err:
        o: dict[str, Any] = {"role": roles.get(n, ("signal", ""))[0], "why": roles.get(n, ("", ""))[1],
                             "max_abs_err": err[n], "scale": scale[n]}
        if judge.rel_tol is not None:
            o["tolerance"] = judge.rel_tol * max(scale[n], SCALE_FLOOR)
        o.update(stats[n].result() if n in stats else {})
        outputs[n] = o
    failed = mismatch[:5] + _judge(judge, outputs)
    return _validation(precision, task, judge, outputs, failed, bool(mismatch), len(refs), len(judged_set), where)


def _judge(j: Judge, outputs: dict[str, dict]) -> list[str]:
    """Why the outputs fail the precision's Judge (empty: passed)."""
    bad = []
    for n, o in outputs.items():
        if j.rel_tol is not None:
            if not o["max_abs_err"] <= o["tolerance"]:
                bad.append(f"output {n}: max abs err {o['max_abs_err']:.3g} > tolerance {o['tolerance']:.3g} "
                           f"({j.rel_tol:g} x its max |PyTorch value| {o['scale']:.3g})")
            continue
        if o["role"] in ("class-scores", "labels"):
            if "top1_agreement" not in o:
                bad.append(f"output {n}: no judged case")
                continue
            if o["top1_agreement"] < j.top1:
                bad.append(f"output {n}: top-1 agreement with PyTorch {o['top1_agreement']:.3f} < {j.top1:g} "
                           f"({o['rows']} rows)")
            if o["role"] == "class-scores" and o["top5_contains"] < j.top5:
                bad.append(f"output {n}: PyTorch's top-1 in the top-5 for {o['top5_contains']:.3f} of rows "
                           f"< {j.top5:g}")
        elif "sqnr_db" not in o:
            bad.append(f"output {n}: no judged case")
        elif o["sqnr_db"] < j.sqnr_db or o["cos_min"] < j.cos_min:
            bad.append(f"output {n}: SQNR {o['sqnr_db']:.1f} dB (needs >= {j.sqnr_db:g}), min cosine "
                       f"{o['cos_min']:.4f} (needs >= {j.cos_min:g}) over {o['samples']} samples")
    return bad


def _validation(precision, task, judge, outputs, failed, mismatch, n_cases, n_judged, where) -> Validation:
    worst = max(outputs.values(), key=lambda o: o["max_abs_err"] / o["tolerance"] if o.get("tolerance") else 0.0,
                default={})
    max_abs = max((o["max_abs_err"] for o in outputs.values()), default=0.0)
    max_rel = max((o["max_abs_err"] / max(o["scale"], SCALE_FLOOR) for o in outputs.values()), default=0.0)
    detail: dict[str, Any] = {"task": task, "outputs": outputs, "judged_cases": n_judged,
                              "thresholds": {k: v for k, v in asdict(judge).items() if v is not None},
                              "output_scale": max((o["scale"] for o in outputs.values()), default=0.0)}
    if judge.rel_tol is not None:
        detail["tolerance_rule"] = f"{judge.rel_tol:g} x max(the output's max |PyTorch value|, {SCALE_FLOOR:.3g})"
    first_cls = next((o for o in outputs.values() if "top1_agreement" in o), None)
    if first_cls is not None:
        detail["top1_agreement"] = first_cls["top1_agreement"]
    if mismatch:
        detail["mismatch"] = [f for f in failed if f.startswith("case ")]
    if failed:
        detail["failed"] = failed
    return Validation(passed=not failed, max_abs_err=max_abs, max_rel_err=max_rel,
                      tolerance=worst.get("tolerance"), where=where or host(), cases=n_cases, detail=detail)


def host() -> str:
    return f"{platform.system()} {platform.machine()} ({platform.processor() or 'cpu'})"


def run_cases(run: Callable[[dict], dict], cases: list[dict]) -> list[dict[str, np.ndarray] | Exception]:
    """Outputs per case; a case the artifact raises on (e.g. a shape baked into the graph) yields the
    error instead, so ``compare`` fails the artifact with the reason rather than the whole export."""
    gots: list = []
    for c in cases:
        try:
            gots.append(run(c))
        except Exception as e:  # backend libraries raise their own types
            first = first_line(e)
            shapes = ", ".join(f"{k}{list(np.shape(v))}" for k, v in c.items())
            gots.append(RuntimeError(f"the artifact raised on inputs {shapes}: {type(e).__name__}: {first}"))
    return gots


def validate_artifact(path, target, artifact, graph, cases, refs, task: Any = None,
                      judged: list[int] | None = None, evidence: tuple[list, list] | None = None,
                      **options: Any) -> Validation:
    """Open ``artifact`` with the backend its target names and compare it with ``refs`` on ``cases``;
    ``evidence`` (cases, refs) is judged apart and recorded as ``detail["control_flow_evidence"]``."""
    from edgekit.runtimes import backend_class

    impl = backend_class(target.backend)(path, artifact, graph, **options)
    version = getattr(impl, "version", "")
    where = f"{target.backend} {version} on {host()}".replace("  ", " ")
    v = compare(refs, run_cases(impl.run, cases), artifact.precision, task, judged=judged, where=where, cases=cases)
    if evidence is not None:
        ev = compare(evidence[1], run_cases(impl.run, evidence[0]), artifact.precision, task, where=where,
                     cases=evidence[0])
        v.detail["control_flow_evidence"] = {"cases": len(evidence[0]), "passed": ev.passed,
                                             **({"failed": ev.detail["failed"][:3]} if not ev.passed else {})}
    return v


CONTROL_FLOW_FIX = ("rewrite the value-dependent branch or loop with torch.cond / torch.while_loop so torch.export "
                    "captures it, or accept the traced graph with accept_traced_control_flow=True (CLI: "
                    "--accept-traced-control-flow) if your inputs always stay like the example")


def _control_flow(v: Validation, traced: list[str], holdout: bool) -> str | None:
    """Record the evidence for a traced graph that baked in Python control flow; the problem, if any."""
    ev = v.detail.pop("control_flow_evidence", None)
    cf: dict[str, Any] = {"tracer_warnings": traced[:5]}
    problem = None
    if holdout:  # int8: judged on real held-out samples, which is the evidence
        cf["evidence"] = f"int8 metrics on {v.detail.get('judged_cases', 0)} held-out calibration samples"
    elif not ev or not ev["cases"]:
        problem = ("no input could exercise it (no float input to scale, no calibration data, or PyTorch "
                   "rejected every such input)")
        cf["evidence"] = "none"
    elif not ev["passed"]:
        problem = f"the graph disagrees with PyTorch at other input magnitudes ({ev['failed'][0]})"
        cf["evidence"] = f"failed on {ev['cases']} cases (the example x {', '.join(map(str, MAGNITUDES))}" \
                         " and calibration samples)"
    else:
        cf["evidence"] = (f"agreed with PyTorch on {ev['cases']} cases (the example x "
                          f"{', '.join(map(str, MAGNITUDES))} and calibration samples)")
    v.detail["control_flow"] = cf
    if problem is None:
        return None
    return f"the trace baked in Python control flow on tensor values ({traced[0]}) and {problem}"


def verdict(art: Any, traced: list[str], caveats: list[str], dropped: list[str], accept_traced: bool,
            holdout: bool = False) -> None:
    """Set ``art.status``/``status_reason`` from its validation: the judge's failures, the control-flow
    evidence of a traced graph, and the caveats of what this validation could not show."""
    v = art.validation
    if dropped:
        v.detail["dropped_cases"] = dropped
    caveats, failed = list(caveats), list(v.detail.get("failed", []))
    problem = _control_flow(v, traced, holdout) if traced else None
    if problem and accept_traced:
        caveats.append(f"accepted without evidence (accept_traced_control_flow): {problem}")
        v.detail["control_flow"]["accepted"] = True
    elif problem:
        failed.insert(0, f"{problem} (fix: {CONTROL_FLOW_FIX})")
    if v.tolerance is not None and v.detail.get("output_scale", 1.0) <= v.tolerance:
        caveats.append(f"validation is weak: the tolerance {v.tolerance:.3g} is at least the largest |output| "
                       f"{v.detail['output_scale']:.3g}, so even an all-zero output would pass (outputs at the "
                       "limit of float32); validate with trained weights")
    rows = [o.get("rows", o.get("samples", 0)) for o in v.detail.get("outputs", {}).values() if "tolerance" not in o]
    if rows and min(rows) < MIN_JUDGED:
        caveats.append(f"validation is weak: {art.precision} was judged on only {min(rows)} samples; give a "
                       f"calibration set of >= {int(np.ceil(MIN_JUDGED / HOLDOUT))} samples ({HOLDOUT:.0%} are "
                       "held out to judge on)")
    if caveats:  # what this validation could not show; also printed with the export table and by `edgekit info`
        v.detail["caveats"] = caveats
        art.extra.setdefault("notes", []).extend(caveats)
    v.passed = not failed
    if failed:
        v.detail["failed"] = failed
        art.status = "failed"
        art.status_reason = f"validation failed: {failed[0]}" + (f" (+{len(failed) - 1} more)" if len(failed) > 1 else "")
