"""The skip-path frame loop (runtime code) driving the PyTorch graphs: semantics and edge cases."""
import subprocess
import sys

import numpy as np
import pytest

from edgekit.core.errors import DataError, UsageError
from edgekit.runtimes.pipelines.vos import resize2d, resize_matrix

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite_pytorch")


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    from edgekit.vos.model import load_builtin, torch_pipeline
    return torch_pipeline(load_builtin())


@pytest.fixture(scope="module")
def clip():
    from edgekit.vos.data import make_video
    return make_video(200_003, frames=8, size=(128, 128))


def test_runtime_module_is_torch_free():
    code = ("import sys, edgekit.runtimes.pipelines.vos, edgekit.vos.metrics, edgekit.vos.io;"
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bilinear_upsampling_matches_torch():
    a = np.random.default_rng(0).standard_normal((1, 1, 16, 16)).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(a), size=(97, 131), mode="bilinear",
                                          align_corners=False).numpy()
    assert np.allclose(resize2d(a, 97, 131), ref, atol=1e-5)
    m = resize_matrix(128, 16)  # area filter when shrinking: rows are averages of 8 pixels
    assert np.allclose(m.sum(1), 1) and np.allclose(m[0, :8], 1 / 8)


def test_tau_one_never_reuses_and_tracks(pipe, clip):
    vid, gt = clip
    r = pipe.run(vid, gt[0], tau=1.0)
    assert r.masks.shape == gt.shape and r.reuse_rate == 0.0 and not any(r.reused)
    assert np.array_equal(r.masks[0], gt[0])  # the given mask is frame 0's answer
    from edgekit.vos.metrics import j_region
    assert np.mean([j_region(r.masks[i], gt[i]) for i in range(1, 8)]) > 0.5


def test_still_video_is_mostly_reused(pipe, clip):
    vid, gt = clip
    rng = np.random.default_rng(0)
    still = np.stack([np.clip(vid[0] + rng.normal(0, 2, vid[0].shape), 0, 255).astype(np.uint8)
                      for _ in range(8)])
    r = pipe.run(still, gt[0], tau=0.5)
    assert r.reuse_rate >= 0.5, r.p_reuse
    assert pipe.run(still, gt[0], tau=0.0).reuse_rate == 1.0  # p > 0 always: tau 0 reuses every frame


def test_odd_size_video(pipe):
    rng = np.random.default_rng(1)
    vid = rng.integers(0, 255, (3, 97, 131, 3), dtype=np.uint8)
    m0 = np.zeros((97, 131), np.uint8)
    m0[30:60, 40:90] = 255
    r = pipe.run(vid, m0, tau=0.7)
    assert r.masks.shape == (3, 97, 131) and set(np.unique(r.masks)) <= {0, 1}


def test_one_frame_video(pipe, clip):
    vid, gt = clip
    r = pipe.run(vid[:1], gt[0] * 255, tau=0.7)
    assert r.masks.shape == (1, 128, 128) and np.array_equal(r.masks[0], gt[0])
    assert r.reuse_rate == 0.0 and r.reused == [False]


def test_bad_inputs_give_clear_errors(pipe, clip):
    vid, gt = clip
    with pytest.raises(DataError, match=r"mask is 64x64 but the video is 128x128"):
        pipe.run(vid, np.ones((64, 64), np.uint8))
    with pytest.raises(DataError, match="empty"):
        pipe.run(vid, np.zeros((128, 128), np.uint8))
    with pytest.raises(DataError, match="no frames"):
        pipe.run([], gt[0])
    with pytest.raises(UsageError, match="tau"):
        pipe.run(vid, gt[0], tau=1.5)
    rgb = np.repeat(gt[0][..., None] * 255, 3, axis=2)  # an RGB mask PNG is accepted
    assert pipe.run(vid[:2], rgb).masks.shape == (2, 128, 128)
