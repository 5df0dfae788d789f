"""Users' own data at the edges: VOS videos/masks (`edgekit vos`) and PPP personal data
(`edgekit personalize`). Each case was found by feeding real user-style files to the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit.core.errors import DataError, UsageError
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- VOS: frames arrays
def test_float_frames_in_unit_range_are_scaled_not_zeroed():
    from edgekit.vos.io import frames_array
    x = np.random.default_rng(0).random((2, 5, 7, 3)).astype(np.float32)
    got = frames_array(x)
    assert got.dtype == np.uint8 and got.shape == (2, 5, 7, 3)
    assert np.abs(got.astype(int) - np.round(x * 255)).max() == 0 and got.max() > 200


@pytest.mark.parametrize("arr, match", [
    (np.full((2, 4, 4, 3), 300, np.int64), "outside 0-255"),          # used to wrap around silently
    (np.full((2, 4, 4, 3), np.nan, np.float32), "NaN"),                 # used to become black frames
    (np.zeros((3, 4, 4), np.uint8), "channel axis"),                    # grayscale without channel axis
])
def test_bad_frame_arrays_are_refused(arr, match):
    from edgekit.vos.io import frames_array
    with pytest.raises(DataError, match=match):
        frames_array(arr)


def test_gray_and_rgba_frame_arrays_become_rgb():
    from edgekit.vos.io import frames_array
    g = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4, 1)
    assert np.array_equal(frames_array(g), np.repeat(g, 3, axis=-1))
    rgba = np.random.default_rng(1).integers(0, 255, (2, 3, 4, 4)).astype(np.uint8)
    assert np.array_equal(frames_array(rgba), rgba[..., :3])


def test_unreadable_npy_video_is_a_data_error(tmp_path):
    from edgekit.vos.io import open_video
    (tmp_path / "garbage.npy").write_bytes(b"not numpy at all")
    np.save(tmp_path / "obj.npy", np.array([1, None], dtype=object), allow_pickle=True)
    for f in ("garbage.npy", "obj.npy"):
        with pytest.raises(DataError, match="cannot read"):
            open_video(tmp_path / f)
    mask = tmp_path / "m.png"
    Image.fromarray(np.full((4, 4), 255, np.uint8)).save(mask)
    r = run_cli("vos", tmp_path / "garbage.npy", "--mask", mask, "--out", tmp_path / "o")
    assert r.returncode == 1 and "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0
    assert "not a NumPy" in r.stderr and not (tmp_path / "o").exists()


# ---------------------------------------------------------------- VOS: masks
def _square(h=16, w=16):
    m = np.zeros((h, w), np.uint8)
    m[4:12, 4:12] = 1
    return m


def test_alpha_masks(tmp_path):
    from edgekit.vos.io import read_mask
    sq = _square()
    alpha_only = np.zeros((16, 16, 4), np.uint8)
    alpha_only[..., 3] = sq * 255                       # object drawn in alpha, colour all black
    white_on_clear = np.full((16, 16, 4), 255, np.uint8)
    white_on_clear[..., 3] = sq * 255                   # white layer, transparent background
    opaque = np.zeros((16, 16, 4), np.uint8)
    opaque[..., :3] = sq[..., None] * 255
    opaque[..., 3] = 255                                # ordinary RGBA export: colour decides
    for i, a in enumerate((alpha_only, white_on_clear, opaque)):
        Image.fromarray(a, "RGBA").save(tmp_path / f"{i}.png")
        assert np.array_equal(read_mask(tmp_path / f"{i}.png"), sq), i
    Image.fromarray(sq * 255).save(tmp_path / "l.png")
    assert np.array_equal(read_mask(tmp_path / "l.png"), sq)


def test_multi_object_ids_detected(tmp_path):
    from edgekit.vos.io import mask_object_ids
    m = _square()
    m[13:15, 13:15] = 2
    Image.fromarray(m).save(tmp_path / "ids.png")
    p = Image.fromarray(m).convert("P")
    p.save(tmp_path / "pal.png")
    Image.fromarray(_square() * 255).save(tmp_path / "bin255.png")
    Image.fromarray(_square()).save(tmp_path / "bin01.png")
    assert mask_object_ids(tmp_path / "ids.png") == [1, 2]
    assert mask_object_ids(tmp_path / "bin255.png") == [] and mask_object_ids(tmp_path / "bin01.png") == []


def test_segment_float_npy_video_with_multi_id_mask(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite_pytorch")
    from edgekit.vos.segment import segment
    rng = np.random.default_rng(0)
    base = rng.random((24, 30, 3)).astype(np.float32)
    np.save(tmp_path / "v.npy", np.stack([base, base, base]))           # floats in [0, 1]
    m = np.zeros((24, 30), np.uint8)
    m[4:12, 4:14], m[14:20, 16:26] = 1, 2
    Image.fromarray(m).save(tmp_path / "m.png")
    from edgekit.core.notices import EdgekitWarning

    with pytest.warns(EdgekitWarning, match="2 object ids"):  # a warning: shown by the CLI in every mode
        rep = segment(str(tmp_path / "v.npy"), str(tmp_path / "m.png"), str(tmp_path / "o"), backend="torch",
                      gif=False, threads=1)
    assert rep["frames"] == 3 and rep["merged_object_ids"] == [1, 2]
    first = np.asarray(Image.open(tmp_path / "o" / "00000.png"))
    assert first.shape == (24, 30) and np.array_equal(first > 0, m > 0)
    assert (np.asarray(Image.open(tmp_path / "o" / "00002.png")) > 0).any()
    from edgekit.vos.io import open_video
    frames, _ = open_video(tmp_path / "v.npy")   # the frames the model saw: scaled, not cast to black
    assert np.array_equal(next(frames), np.round(base * 255).astype(np.uint8))


# ---------------------------------------------------------------- PPP: personal data
SHAPE = (1, 28, 28)


def test_channelless_one_channel_samples_are_accepted():
    from edgekit.runtimes.pipelines.ppp_proto import check_personal
    x = np.random.default_rng(0).standard_normal((5, 28, 28)).astype(np.float32)
    got = check_personal(x, SHAPE)
    assert got.shape == (5, 1, 28, 28) and np.array_equal(got[:, 0], x)
    assert check_personal(x[0], SHAPE).shape == (1, 1, 28, 28)   # one sample, no N and no C axis
    assert check_personal(x[:1, None][0], SHAPE).shape == (1, 1, 28, 28)


def test_shape_error_reports_the_users_shape():
    from edgekit.runtimes.pipelines.ppp_proto import check_personal
    with pytest.raises(DataError, match=r"shape \(5, 28, 28, 1\)"):
        check_personal(np.zeros((5, 28, 28, 1), np.float32), SHAPE)
    with pytest.raises(DataError, match=r"shape \(7, 30, 30\)"):
        check_personal(np.zeros((7, 30, 30), np.float32), SHAPE)


def test_integer_samples_are_refused_as_unpreprocessed():
    from edgekit.runtimes.pipelines.ppp_proto import check_personal
    with pytest.raises(DataError, match="unpreprocessed"):
        check_personal(np.zeros((4, *SHAPE), np.uint8), SHAPE)


@pytest.mark.parametrize("content", [b"", b"not a zip", b"1,2,3\n4,5,6\n"])
def test_non_numpy_files_are_named_as_such(tmp_path, content):
    from edgekit.runtimes.pipelines.ppp_proto import load_personal
    f = tmp_path / "p.npz"
    f.write_bytes(content)
    with pytest.raises(DataError, match="not a NumPy .npz/.npy file"):
        load_personal(f, "x", SHAPE)
    with pytest.raises(DataError, match="is a folder"):
        load_personal(tmp_path, "x", SHAPE)


@pytest.mark.parametrize("t", [float("nan"), -1.0, 1.0, 2.0])
def test_bad_threshold_is_a_usage_error(t):
    from edgekit.runtimes.pipelines.ppp_proto import keep_masks
    with pytest.raises(UsageError, match="threshold"):
        keep_masks([np.full(16, 0.7)], threshold=t)
    assert keep_masks([np.full(16, 0.7)], threshold=0.0, multiple=1)[0].all()


def test_output_and_name_are_checked(tmp_path):
    from edgekit.runtimes.pipelines.ppp_proto import check_output
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        check_output(tmp_path / "f", None)
    for bad in ("../evil", "a/b", "..", "", "  "):
        with pytest.raises(UsageError, match="plain name"):
            check_output(tmp_path / "o", bad)
    check_output(tmp_path / "o", "my-model")
    assert not (tmp_path / "o").exists()


def test_sources_resolve_or_fail_clearly(tmp_path):
    pytest.importorskip("safetensors")
    from edgekit.runtimes.pipelines.ppp_proto import NotPPPError

    from edgekit.ppp.tasks import personalize_any, resolve_checkpoint
    assert resolve_checkpoint("builtin:ppp-fashion-gated") == resolve_checkpoint("builtin:ppp-fashion")
    np.savez(tmp_path / "p.npz", x=np.zeros((2, *SHAPE), np.float32))
    with pytest.raises(UsageError, match="no gated bundle or PPP checkpoint"):
        personalize_any(str(tmp_path / "nope.edgekit"), str(tmp_path / "p.npz"), str(tmp_path / "o"))
    pytest.importorskip("torch")
    with pytest.raises(NotPPPError, match="not a PPP checkpoint"):
        personalize_any(str(tmp_path / "p.npz"), str(tmp_path / "p.npz"), str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_cli_personalize_torch_free_bundle_user_data(tmp_path):
    """A gated bundle + channel-less personal data works; an escaping --name and a bad source are
    one-line errors that write nothing."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from edgekit.ppp import personalize as ppp
    from edgekit.ppp.export import export_gated

    torch.set_num_threads(1)
    g, _ = ppp.load_checkpoint(REPO / "edgekit/ppp/weights/ppp_digits.safetensors")
    shape = tuple(g.cfg["input_shape"])
    assert shape[0] == 1
    bundle = export_gated(g, {"labels": [str(i) for i in range(10)]}, tmp_path / "b", name="t-gated").root
    x = np.random.default_rng(0).standard_normal((6, *shape)).astype(np.float32)
    np.savez(tmp_path / "nc.npz", x=x[:, 0])                        # (N, H, W): no channel axis
    r = run_cli("personalize", bundle, "--data", tmp_path / "nc.npz", "--out", tmp_path / "o",
                "--keep-ratio", "0.5", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["prototype_size"] == 6 and rep["flops_after"] < rep["flops_before"]
    r = run_cli("personalize", bundle, "--data", tmp_path / "nc.npz", "--out", tmp_path / "o2",
                "--name", "../escaped")
    assert r.returncode == 1 and "plain name" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "escaped.edgekit").exists() and not (tmp_path / "o2").exists()
    r = run_cli("personalize", tmp_path / "missing.edgekit", "--data", tmp_path / "nc.npz", "--out", tmp_path / "o3",
                "--json")
    assert r.returncode == 1 and r.stderr == ""  # under --json the error is one JSON object on stdout
    assert "no gated bundle or PPP checkpoint" in json.loads(r.stdout)["error"] and not (tmp_path / "o3").exists()
