"""The one validation routine: run an artifact on validation cases and compare with the reference.

Cases are the example inputs plus random inputs drawn like them (same value range; integer inputs
take values seen in the example, so token ids and masks stay valid), at other sizes on every
dynamic axis. Torch is not needed here; the reference outputs come from the caller.
"""
from __future__ import annotations

import platform
from typing import Any, Callable

import numpy as np
from edgekit.exporters.targets import MIN_AGREEMENT, TOLERANCE

from edgekit.core.bundle import Validation
from edgekit.core.errors import first_line


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


def compare(refs: list[dict[str, np.ndarray]], gots: list[dict[str, np.ndarray]], precision: str,
            classifier: bool = False, where: str = "") -> Validation:
    max_abs, scale, mismatch = 0.0, 0.0, []
    agree, total = 0, 0
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
            # NaN/inf in the reference (log of 0, -inf attention masks) must be matched exactly and kept
            # out of the scale: one inf there would make the tolerance inf and pass any artifact
            fr, fg = np.isfinite(r64), np.isfinite(g64)
            both = fr & fg
            same = (np.isnan(r64) & np.isnan(g64)) | (~fr & ~np.isnan(r64) & (r64 == g64))
            lost, changed = fr & ~fg, ~fr & ~same
            if lost.any():
                mismatch.append(f"case {i} output {name}: {int(lost.sum())} NaN/inf values where PyTorch's "
                                "are finite")
            if changed.any():
                mismatch.append(f"case {i} output {name}: {int(changed.sum())} values differ where PyTorch's "
                                "are NaN/inf")
            diff = np.abs(r64[both] - g64[both])
            err = float(np.inf) if (lost.any() or changed.any()) else float(diff.max()) if diff.size else 0.0
            max_abs = max(max_abs, err)
            scale = max(scale, float(np.abs(r64[fr]).max()) if fr.any() else 0.0)
        if classifier and ref:
            first = next(iter(ref))
            if first in got and np.shape(got[first]) == np.shape(ref[first]) and np.ndim(ref[first]) >= 1:
                agree += int((np.argmax(ref[first], -1) == np.argmax(got[first], -1)).sum())
                total += int(np.prod(np.shape(ref[first])[:-1]) or 1)
    tol = TOLERANCE[precision] * max(1.0, scale)
    detail: dict[str, Any] = {"output_scale": scale, "tolerance_rule": f"{TOLERANCE[precision]} x max(1, max|ref|)"}
    agreement = agree / total if total else None
    if agreement is not None:
        detail["top1_agreement"] = agreement
    if mismatch:
        passed = False
        detail["mismatch"] = mismatch[:5]
    elif precision == "int8":  # quantised: judge by decisions where we can, else by relative error
        passed = agreement >= MIN_AGREEMENT["int8"] if agreement is not None else max_abs <= tol
    else:
        passed = max_abs <= tol and (agreement is None or agreement >= MIN_AGREEMENT[precision])
    return Validation(passed=bool(passed), max_abs_err=max_abs, max_rel_err=max_abs / scale if scale else max_abs,
                      tolerance=tol, where=where or host(), cases=len(refs), detail=detail)


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


def validate_artifact(path, target, artifact, graph, cases, refs, classifier: bool = False,
                      **options: Any) -> Validation:
    """Open ``artifact`` with the backend its target names and compare it with ``refs`` on ``cases``."""
    from edgekit.runtimes import backend_class

    impl = backend_class(target.backend)(path, artifact, graph, **options)
    gots = run_cases(impl.run, cases)
    version = getattr(impl, "version", "")
    return compare(refs, gots, artifact.precision, classifier,
                   where=f"{target.backend} {version} on {host()}".replace("  ", " "))
