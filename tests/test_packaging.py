"""Packaging: the sibling folders install as edgekit.exporters/.runtimes/.federated, in a wheel too."""
from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile

from tests.conftest import REPO


def _packages_on_disk() -> set[str]:
    roots = {"edgekit": REPO / "edgekit", "edgekit.exporters": REPO / "exporters",
             "edgekit.runtimes": REPO / "runtimes", "edgekit.federated": REPO / "federated"}
    found = set()
    for pkg, root in roots.items():
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root).parts
            found.add(".".join((pkg, *rel)))
    return found


def test_every_package_is_declared():
    declared = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert _packages_on_disk() <= declared, f"add to pyproject packages: {_packages_on_disk() - declared}"


def test_wheel_contains_the_mapped_packages(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    wheel = next(tmp_path.glob("edgekit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for must in ("edgekit/runtimes/__init__.py", "edgekit/runtimes/ort.py", "edgekit/exporters/onnx.py",
                 "edgekit/federated/__init__.py", "edgekit/models/weights/digits_cnn.npz", "edgekit/cli/main.py", "edgekit/ppp/weights/ppp_fashion.safetensors",
                 "edgekit/vos/weights/vos_skip_heads.safetensors", "edgekit/tokengate/splits/rotten_tomatoes_split.npz"):
        assert must in names, must
    assert not any(n.startswith(("runtimes/", "exporters/", "federated/", "tests/")) for n in names)


def test_no_script_shadows_an_installed_package():
    """`python benchmarks/X.py` puts benchmarks/ first on sys.path: a script named like a library the
    exporters import (executorch, onnx, ...) would be imported in its place."""
    import importlib.machinery

    outside = [p for p in sys.path if p and p not in (str(REPO), ".")]
    clash = []
    for folder in ("benchmarks", "scripts"):
        for f in (REPO / folder).glob("*.py"):
            if f.stem != "__init__" and importlib.machinery.PathFinder.find_spec(f.stem, outside) is not None:
                clash.append(f"{folder}/{f.name}")
    assert not clash, f"rename these scripts, they shadow installed packages: {clash}"
