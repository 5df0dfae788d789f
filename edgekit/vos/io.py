"""Video and mask I/O for VOS (torch-free): decode videos, read/write PNG masks, overlay GIF.

Videos decode with the ffmpeg binary bundled in the ``imageio-ffmpeg`` wheel (no system ffmpeg
needed); ``.npy``/``.npz`` arrays [T,H,W,3] uint8 and folders of PNG/JPG frames also work.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from edgekit.core.errors import BackendUnavailableError, DataError, MissingFileError

IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp")


def _ffmpeg_frames(path: Path) -> tuple[Iterator[np.ndarray], dict]:
    try:
        import imageio_ffmpeg
    except ImportError:
        raise BackendUnavailableError("reading video files needs imageio-ffmpeg",
                                      'pip install "edgekit[vos]" (imageio-ffmpeg)') from None
    gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        meta = next(gen)
    except (RuntimeError, OSError, StopIteration) as e:
        raise DataError(f"cannot decode video {path.name}: {str(e).splitlines()[0][:200]}",
                        hint="give an .mp4/.avi/.mov ffmpeg can read, an .npy array or a folder of frames") from None
    w, h = meta["size"]

    def frames():
        for buf in gen:
            yield np.frombuffer(buf, np.uint8).reshape(h, w, 3)
    return frames(), {"width": w, "height": h, "fps": float(meta.get("fps") or 25.0)}


def open_video(path: str | os.PathLike, max_frames: int | None = None) -> tuple[Iterator[np.ndarray], dict]:
    """(iterator of uint8 [H,W,3] frames, info {width, height, fps})."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"video not found: {path}", hint="check the path")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXT)
        if not files:
            raise DataError(f"folder {path} holds no frame images", hint=f"put {'/'.join(IMAGE_EXT)} files in it")
        first = read_image(files[0])
        it, info = (read_image(f) for f in files), {"width": first.shape[1], "height": first.shape[0], "fps": 25.0}
    elif path.suffix.lower() in (".npy", ".npz"):
        arr = frames_array(_load_array(path), path.name)
        it, info = iter(arr), {"width": arr.shape[2], "height": arr.shape[1], "fps": 25.0}
    else:
        it, info = _ffmpeg_frames(path)
    if max_frames is not None:
        import itertools
        it = itertools.islice(it, max_frames)
    return it, info


def _load_array(path: Path) -> np.ndarray:
    """The (first) array of an .npy/.npz file; never unpickles."""
    try:
        obj = np.load(path, allow_pickle=False)
        if isinstance(obj, np.ndarray):
            return obj
        with obj:
            if not obj.files:
                raise DataError(f"{path.name} holds no arrays", hint="save the frames with np.save(f, frames)")
            return obj[obj.files[0]]
    except DataError:
        raise
    except Exception as e:  # object arrays, not a NumPy file, truncated zip ...
        why = "not a NumPy .npy/.npz file" if "pickled" in str(e) else str(e).splitlines()[0][:200]
        raise DataError(f"cannot read {path.name} as a NumPy array: {why}",
                        hint="save the frames with np.save(f, frames) as one uint8 array [T,H,W,3]") from None


def frames_array(arr: np.ndarray, name: str = "frames") -> np.ndarray:
    """A [T,H,W,C] frame array (C = 1, 3 or 4; uint8 0-255, other integers 0-255 or floats in [0,1])
    -> uint8 [T,H,W,3]. Anything that would be silently mangled by a cast is refused."""
    arr = np.asarray(arr)
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        hint = ("grayscale frames need a channel axis: np.save(f, frames[..., None])" if arr.ndim == 3
                else "save the frames as one uint8 array [T,H,W,3]")
        raise DataError(f"{name} has shape {list(arr.shape)}, expected [T,H,W,3] (or [T,H,W,1] / [T,H,W,4])",
                        hint=hint)
    if arr.dtype != np.uint8:
        if arr.dtype.kind not in "biuf":
            raise DataError(f"{name} has dtype {arr.dtype}, expected uint8 frames", hint="save uint8 RGB frames")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise DataError(f"{name} contains NaN or infinite values", hint="save uint8 RGB frames (0-255)")
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if arr.dtype.kind == "f" and lo >= 0.0 and hi <= 1.0:
            arr = np.round(arr * 255.0)  # float frames in [0, 1]
        elif lo < 0 or hi > 255:
            raise DataError(f"{name} values span [{lo:g}, {hi:g}], outside 0-255 (and not floats in [0, 1])",
                            hint="save uint8 RGB frames (0-255) or floats in [0, 1]")
        arr = arr.astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] == 4:
        arr = arr[..., :3]  # RGBA: alpha dropped, as for PNG frames
    return arr


def read_image(path: str | os.PathLike) -> np.ndarray:
    from PIL import Image
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"file not found: {path}", hint="check the path")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as e:
        raise DataError(f"cannot read image {path.name}: {e}", hint="give a PNG or JPEG file") from None


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask PNG -> uint8 [H,W] with 1 where any colour channel is nonzero (palette PNGs: index > 0;
    transparent pixels of an RGBA/LA mask are background, see ``binary_mask``)."""
    from PIL import Image
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"mask not found: {path}", hint="give the first frame's mask PNG")
    try:
        with Image.open(path) as im:
            a = np.asarray(im)
    except OSError as e:
        raise DataError(f"cannot read mask {path.name}: {e}", hint="give a PNG mask (0 = background)") from None
    from edgekit.runtimes.pipelines.vos import binary_mask
    return binary_mask(a)


def mask_object_ids(path: str | os.PathLike) -> list[int]:
    """The object ids of a multi-object label mask (palette PNG, or single-channel with small ids
    such as 1, 2, 3); [] for a plain object/background mask (0/1, 0/255, colour)."""
    from PIL import Image
    with Image.open(path) as im:
        palette, a = im.mode == "P", np.asarray(im)
    if a.ndim != 2:
        return []
    ids = [int(v) for v in np.unique(a) if v != 0]
    return ids if len(ids) > 1 and (palette or max(ids) < 32) else []


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    from PIL import Image
    Image.fromarray(((np.asarray(mask) > 0) * 255).astype(np.uint8), mode="L").save(path)


class MaskWriter:
    """Writes 00000.png, 00001.png ... into a temp folder; ``commit()`` moves it to ``out`` atomically."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        if self.out.exists() and (not self.out.is_dir() or any(self.out.iterdir())):
            raise DataError(f"output folder {self.out} exists and is not empty",
                            hint="give a new or empty --out folder")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=self.out.parent))
        self.n = 0

    def add(self, mask: np.ndarray) -> None:
        write_mask(self.tmp / f"{self.n:05d}.png", mask)
        self.n += 1

    def add_file(self, name: str, data: bytes) -> None:
        (self.tmp / name).write_bytes(data)

    @property
    def staging(self) -> Path:
        return self.tmp

    def commit(self) -> Path:
        if self.out.exists():
            self.out.rmdir()  # empty, checked above
        os.replace(self.tmp, self.out)
        return self.out

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def overlay(frame: np.ndarray, mask: np.ndarray, color=(255, 40, 40), alpha: float = 0.5) -> np.ndarray:
    """Frame with the mask tinted and its boundary drawn."""
    from edgekit.vos.metrics import seg2bmap
    out = frame.astype(np.float32).copy()
    m = np.asarray(mask) > 0
    out[m] = (1 - alpha) * out[m] + alpha * np.asarray(color, np.float32)
    out[seg2bmap(m)] = (255, 255, 0)
    return out.astype(np.uint8)


def save_gif(path: str | os.PathLike, frames: list[np.ndarray], fps: float = 10.0, max_side: int = 320) -> None:
    """Write an animated GIF (downscaled so the longer side is <= max_side), atomically."""
    from PIL import Image
    if not frames:
        raise DataError("no frames to write", hint="the video is empty")
    h, w = frames[0].shape[:2]
    s = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * s)), max(1, round(h * s)))
    ims = [Image.fromarray(f).resize(size, Image.BILINEAR) if s < 1 else Image.fromarray(f) for f in frames]
    # fast octree palette per frame (PIL's default median cut costs ~0.1 s a frame)
    ims = [im.quantize(colors=255, method=Image.Quantize.FASTOCTREE) for im in ims]
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    ims[0].save(tmp, format="GIF", save_all=True, append_images=ims[1:], duration=int(1000 / max(fps, 1)),
                loop=0)
    os.replace(tmp, path)
