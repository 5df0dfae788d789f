"""The house contract: floors core <- runtimes <- exporters <- features <- models <- api <- cli, federated
on core (and the shared datasets) only, and no import circles. Imports inside functions count too: a
lazy import may keep a heavy library off the import path, never hide a circle or an upward import."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

ROOTS = {"edgekit": REPO / "edgekit", "edgekit.exporters": REPO / "exporters",
         "edgekit.runtimes": REPO / "runtimes", "edgekit.federated": REPO / "federated"}
# floor of each package (longest prefix wins); a module may import its own floor and the floors below
FLOORS = {
    "edgekit.core": 0, "edgekit.data": 0,
    "edgekit.runtimes": 1,
    "edgekit.exporters": 2,
    "edgekit.ppp": 3, "edgekit.tokengate": 3, "edgekit.vos": 3,
    "edgekit.models": 4,
    "edgekit.api": 5, "edgekit": 5, "edgekit.__main__": 6,
    "edgekit.cli": 6,
}
FEDERATED_MAY_IMPORT = ("edgekit.core", "edgekit.data", "edgekit.federated")
FEATURES = ("edgekit.ppp", "edgekit.tokengate", "edgekit.vos")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, root in ROOTS.items():
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("").parts
            if rel[-1] == "__init__":
                rel = rel[:-1]
            if pkg == "edgekit" and rel and rel[0] in ("exporters", "runtimes", "federated"):
                continue
            mods[".".join((pkg, *rel))] = path
    return mods


def _imports(mod: str, path: Path, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = mod.split(".")[: len(mod.split(".")) - node.level + (1 if is_pkg else 0)]
                base = ".".join(parts + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n and n != mod:
                out.add(n)
    return out


def _floor(mod: str) -> tuple[str, int]:
    best = max((p for p in FLOORS if mod == p or mod.startswith(p + ".")), key=len)
    return best, FLOORS[best]


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {m: _imports(m, p, known) for m, p in mods.items()}


def test_no_upward_imports():
    bad = []
    for mod, deps in _graph().items():
        if mod.startswith("edgekit.federated"):
            bad += [f"{mod} -> {d}" for d in deps if not d.startswith(FEDERATED_MAY_IMPORT)]
            continue
        _, floor = _floor(mod)
        for d in deps:
            if d.startswith("edgekit.federated"):
                if not mod.startswith(("edgekit.cli", "edgekit.api")):
                    bad.append(f"{mod} -> {d} (only the CLI and the facade use federated)")
                continue
            if _floor(d)[1] > floor:
                bad.append(f"{mod} (floor {floor}) -> {d} (floor {_floor(d)[1]})")
            feat = [f for f in FEATURES if mod.startswith(f)]
            if feat and any(d.startswith(f) for f in FEATURES if f != feat[0]):
                bad.append(f"{mod} -> {d} (features do not import each other)")
    assert not bad, "imports against the floors:\n" + "\n".join(sorted(bad))


def test_no_import_circles():
    graph = _graph()
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    import sys
    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    assert not sccs, "import circles:\n" + "\n".join(" <-> ".join(c) for c in sccs)
