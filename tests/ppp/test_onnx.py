"""PPP on the device: torch-free personalization of a gated bundle (ONNX rewrite), equivalence with
the PyTorch path, CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from edgekit.ppp import personalize as ppp  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from edgekit.ppp.export import export_gated
    from edgekit.data.fashion_mnist import load_digits

    torch.set_num_threads(1)
    xt, yt = load_digits("test")
    g, _ = ppp.load_checkpoint(REPO / "edgekit/ppp/weights/ppp_digits.safetensors")
    tmp = tmp_path_factory.mktemp("ppp_onnx")
    bundle = export_gated(g, {"labels": [str(i) for i in range(10)]}, tmp, name="tiny-gated").root
    users = {}
    for u, classes in enumerate([(0, 1), (3, 5, 8), (2, 4, 6, 9)]):
        sel = np.isin(yt, classes)
        f = tmp / f"user{u}.npz"
        np.savez(f, x=xt[sel][:32])
        users[u] = (f, xt[sel])
    return g, bundle, users, tmp


def _torch_free(bundle, data, out, keep_ratio):
    """Run the torch-free path in a subprocess where `import torch` raises ImportError."""
    block = out.parent / "no_torch"
    (block / "torch").mkdir(parents=True, exist_ok=True)
    (block / "torch" / "__init__.py").write_text("raise ImportError('torch is blocked for this test')\n")
    code = textwrap.dedent(f"""
        import json, sys
        try:
            import torch
            raise SystemExit("torch imported although blocked")
        except ImportError:
            pass
        from edgekit.runtimes.pipelines.ppp import personalize_bundle
        info = personalize_bundle({str(bundle)!r}, {str(data)!r}, {str(out)!r}, keep_ratio={keep_ratio!r})
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch got imported"
        print(json.dumps(info))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(block), str(REPO)])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("user,keep_ratio", [(0, 0.5), (1, 0.35), (2, None)])
def test_torch_free_equals_pytorch_path(setup, user, keep_ratio, tmp_path):
    g, bundle, users, _ = setup
    data, x_user = users[user]
    info = _torch_free(bundle, data, tmp_path / "out", keep_ratio)
    # the PyTorch path on the same model and data
    res = ppp.personalize(g, np.load(data)["x"], keep_ratio=keep_ratio)
    b = json.loads((Path(info["bundle"]) / "manifest.json").read_text())
    prov = b["metadata"]["provenance"]
    assert prov["keep_masks"] == [np.flatnonzero(m).tolist() for m in res.masks], "same channel selection"
    assert info["flops_before"] == res.info["flops_before"] and info["flops_after"] == res.info["flops_after"]
    assert info["initializer_bytes_after"] < info["initializer_bytes_before"]
    assert info["params_after"] < info["params_before"]
    sess = ort.InferenceSession(str(Path(info["bundle"]) / "main.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = res.module(torch.from_numpy(x_user)).numpy()
    got = sess.run(["logits"], {"x": x_user})[0]
    assert np.abs(got - ref).max() <= 1e-5
    assert b["artifacts"][0]["validation"]["passed"] is True


def test_bundle_without_gates_is_not_ppp(digits_bundle, tmp_path):
    from edgekit.runtimes.pipelines.ppp import personalize_bundle
    from edgekit.runtimes.pipelines.ppp_proto import NotPPPError

    np.savez(tmp_path / "p.npz", x=np.zeros((4, 1, 8, 8), np.float32))
    with pytest.raises(NotPPPError, match="not trained for PPP"):
        personalize_bundle(digits_bundle, tmp_path / "p.npz", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_personalize_bundle_and_bad_data(setup, tmp_path):
    from tests.conftest import run_cli

    _, bundle, users, _ = setup
    r = run_cli("personalize", bundle, "--data", users[0][0], "--out", tmp_path / "ok", "--keep-ratio", "0.5", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert Path(info["bundle"]).is_dir() and info["flops_after"] < info["flops_before"]
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.full((3, 1, 8, 8), np.nan, np.float32))
    r = run_cli("personalize", bundle, "--data", bad, "--out", tmp_path / "bad")
    assert r.returncode != 0
    assert "NaN" in (r.stderr + r.stdout) and "Traceback" not in r.stderr
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


def test_openvino_regenerated_from_pruned_onnx(setup, tmp_path):
    pytest.importorskip("openvino")
    from edgekit.runtimes.pipelines.ppp import personalize_bundle

    _, bundle, users, _ = setup
    info = personalize_bundle(bundle, users[1][0], tmp_path, keep_ratio=0.5, openvino=True)
    m = json.loads((Path(info["bundle"]) / "manifest.json").read_text())
    ov = [a for a in m["artifacts"] if a["target"] == "openvino"]
    assert ov and ov[0]["status"] == "ok" and ov[0]["validation"]["max_abs_err"] <= 1e-4


@pytest.mark.slow
def test_torch_free_equals_pytorch_path_fashion(tmp_path):
    from edgekit.ppp.export import export_gated
    from edgekit.data import fashion_mnist as fm

    if not fm.available():
        pytest.skip("dataset-fashion-mnist not installed")
    g, meta = ppp.load_checkpoint(REPO / "edgekit/ppp/weights/ppp_fashion.safetensors")
    xt, yt = fm.load("test")
    bundle = export_gated(g, meta, tmp_path, name="fashion-gated").root
    for classes in [(0, 5, 9), (2, 4)]:
        sel = np.flatnonzero(np.isin(yt, classes))
        data = tmp_path / f"u{len(classes)}.npz"
        np.savez(data, x=xt[sel[:32]])
        info = _torch_free(bundle, data, tmp_path / f"out{len(classes)}", 0.4)
        res = ppp.personalize(g, xt[sel[:32]], keep_ratio=0.4)
        prov = json.loads((Path(info["bundle"]) / "manifest.json").read_text())["metadata"]["provenance"]
        assert prov["keep_masks"] == [np.flatnonzero(m).tolist() for m in res.masks]
        sess = ort.InferenceSession(str(Path(info["bundle"]) / "main.onnx"), providers=["CPUExecutionProvider"])
        x = xt[sel[32:332]]
        with torch.no_grad():
            ref = res.module(torch.from_numpy(x)).numpy()
        assert np.abs(sess.run(["logits"], {"x": x})[0] - ref).max() <= 1e-5
