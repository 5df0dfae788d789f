"""The core-only install (what a device gets: `pip install edgekit`, no extras, no torch).

Run by the CI core stage (.ci/run) in a fresh venv where `import torch` fails, against bundles the
full stage made with .ci/make_bundles.py (EDGEKIT_CORE_BUNDLES=DIR); there EDGEKIT_CORE_ONLY=1 also
asserts torch is absent and edgekit is the installed wheel. Elsewhere (`pytest -m core` in a full
venv) the bundles are made first and every command runs with `import torch` blocked.
Everything here must run without torch: no torch import, no fixture that exports.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.core
CORE_ONLY = os.environ.get("EDGEKIT_CORE_ONLY") == "1"
HERE = Path(__file__).resolve().parent
CORE_IMPORTS = ("numpy", "onnx", "onnxruntime", "PIL", "tokenizers", "typer", "click", "rich")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """Subprocess environment in which `import torch` fails (a shim) unless torch is truly absent."""
    e = {**os.environ, "EDGEKIT_THREADS": "1"}
    if CORE_ONLY:
        return e
    shim = tmp_path_factory.mktemp("shim") / "torch"
    shim.mkdir()
    (shim / "__init__.py").write_text("raise ImportError('torch is blocked: this test checks the core install')\n")
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(shim.parent), e.get("PYTHONPATH", "")) if p)
    return e


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> Path:
    given = os.environ.get("EDGEKIT_CORE_BUNDLES")
    if given:
        root = Path(given)
        if not (root / "expected.json").is_file():
            pytest.fail(f"EDGEKIT_CORE_BUNDLES={given} holds no expected.json: run .ci/make_bundles.py {given} "
                        "in the full install first")
        return root
    if CORE_ONLY or importlib.util.find_spec("torch") is None:
        pytest.fail("no bundles to test: set EDGEKIT_CORE_BUNDLES to a directory made by .ci/make_bundles.py")
    root = tmp_path_factory.mktemp("core-bundles")
    script = HERE.parent / ".ci" / "make_bundles.py"
    r = subprocess.run([sys.executable, str(script), str(root)], capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def expected(bundles) -> dict:
    return json.loads((bundles / "expected.json").read_text())


def cli(env: dict, *args, ok: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "edgekit", *map(str, args)], capture_output=True, text=True,
                       env=env, timeout=600, stdin=subprocess.DEVNULL)
    if ok:
        assert r.returncode == 0, (args, r.stderr[-2000:])
    return r


def test_the_install_is_torch_free_and_declares_its_imports(env):
    code = ("import importlib.util, sys\n"
            "try:\n    import torch\nexcept ImportError:\n    pass\nelse:\n    raise SystemExit('torch importable')\n"
            f"missing = [m for m in {CORE_IMPORTS!r} if importlib.util.find_spec(m) is None]\n"
            "assert not missing, f'core imports not installed: {missing}'\n"
            "import edgekit, edgekit.runtimes, edgekit.cli.main\n"
            "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules)\n"
            "print(edgekit.__file__)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    if CORE_ONLY:  # the wheel, not the source tree, is under test
        assert "site-packages" in r.stdout, r.stdout
        assert importlib.util.find_spec("torch") is None


def test_help_through_the_console_script(env):
    exe = shutil.which("edgekit", path=str(Path(sys.executable).parent)) if CORE_ONLY else None
    cmd = [exe, "--help"] if exe else [sys.executable, "-m", "edgekit", "--help"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    for word in ("info", "run", "validate", "bench", "personalize", "vos"):
        assert word in r.stdout


def test_info_run_validate_bench_on_the_default_bundle(env, bundles, expected):
    d = expected["digits"]
    b = bundles / d["bundle"]
    info = json.loads(cli(env, "info", b, "--json").stdout)
    assert {a["target"] for a in info["artifacts"]} == set(d["targets"])
    r = json.loads(cli(env, "run", b, "--input", bundles / d["input"], "--json").stdout)
    assert r["backend"] == "onnxruntime"
    assert [p["index"] for p in r["predictions"]] == d["top1"]  # PyTorch's answers, torch-free
    rows = json.loads(cli(env, "validate", b, "--json").stdout)["artifacts"]
    by_target = {row["target"]: row for row in rows}
    assert by_target["onnx"]["result"] == "pass"
    if "executorch" in by_target:  # needs torch on a host: said, not failed
        assert by_target["executorch"]["result"] == "skipped"  # a separate status from FAIL (exit 0)
        assert "edgekit[executorch]" in by_target["executorch"]["reason"]
    rows = json.loads(cli(env, "bench", b, "--iters", "20", "--warmup", "2", "--json", "--no-torch").stdout)
    onnx = [row for row in rows["artifacts"] if row["target"] == "onnx"][0]
    assert onnx["session"]["p50_ms"] > 0 and onnx["raw"]["p50_ms"] > 0


def test_executorch_backend_says_it_needs_torch(env, bundles, expected):
    d = expected["digits"]
    if "executorch" not in d["targets"]:
        pytest.fail("the full stage made no executorch artifact (is edgekit[executorch] in the dev install?)")
    r = cli(env, "run", bundles / d["bundle"], "--input", bundles / d["input"], "--backend", "executorch", ok=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert "torch" in line and 'pip install "edgekit[executorch]"' in line, line


def test_personalize_a_ppp_bundle_then_run_it(env, bundles, expected, tmp_path):
    p = expected["ppp"]
    r = json.loads(cli(env, "personalize", bundles / p["bundle"], "--data", bundles / p["data"], "--out", tmp_path,
                       "--keep-ratio", "0.5", "--json").stdout)
    assert r["flops_after"] < r["flops_before"] and r["params_after"] < r["params_before"]
    out = Path(r["bundle"])
    arts = json.loads(cli(env, "info", out, "--json").stdout)["artifacts"]
    assert arts and all(a["status"] == "ok" and a["validation"]["passed"] for a in arts)  # checked on the device
    np.savez(tmp_path / "x.npz", x=np.load(bundles / p["data"])["x"][:3])
    res = json.loads(cli(env, "run", out, "--input", tmp_path / "x.npz", "--json").stdout)
    assert len(res["predictions"]) == 3


def test_vos_on_a_vos_bundle_matches_pytorch(env, bundles, expected, tmp_path):
    v = expected["vos"]
    r = json.loads(cli(env, "vos", bundles / v["video"], "--mask", bundles / v["mask"], "--bundle",
                       bundles / v["bundle"], "--out", tmp_path / "masks", "--json").stdout)
    assert r["frames"] == v["frames"]
    pngs = sorted((tmp_path / "masks").glob("*.png"))
    assert len(pngs) == v["frames"]
    from PIL import Image

    fg = [int((np.asarray(Image.open(p)) > 0).sum()) for p in pngs]
    # the torch-free frame loop gives PyTorch's masks (a pixel or two may flip at the 0.5 boundary)
    assert all(abs(a - b) <= max(2, b // 200) for a, b in zip(fg, v["foreground"])), (fg, v["foreground"])
    assert r["reuse_rate"] == pytest.approx(sum(v["reused"][1:]) / (v["frames"] - 1))


def test_text_in_on_a_tokenizer_bundle(env, bundles, expected):
    t = expected["text"]
    args = [x for s in t["texts"] for x in ("--text", s)]
    r = json.loads(cli(env, "run", bundles / t["bundle"], *args, "--json").stdout)
    got, ref = np.array(r["outputs"]["logits"]["values"]), np.array(t["logits"])
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    assert [p["label"] for p in r["predictions"]] == [["neg", "pos"][i] for i in np.argmax(t["logits"], 1)]
