"""Segment a video with the skip-path VOS model: a bundle run torch-free (the built-in one exported
once to a cache folder), or the PyTorch model itself; masks written atomically to a new folder."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from edgekit.core.errors import UsageError
from edgekit.core.notices import warn

BACKENDS = ("onnxruntime", "openvino", "torch")


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEKIT_CACHE") or Path.home() / ".cache" / "edgekit")


def builtin_bundle(log=None) -> Path:
    """Path of the exported built-in VOS bundle, exporting it on first use (keyed by the weights)."""
    from edgekit.vos import WEIGHTS  # torch-free
    if not WEIGHTS.exists():
        raise UsageError(f"built-in VOS weights missing at {WEIGHTS}", "run: python scripts/train_vos.py")
    digest = hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()[:12]
    root = cache_dir() / f"vos-skip-{digest}"
    path = root / "vos-skip.edgekit"
    if not (path / "manifest.json").exists():
        from edgekit.runtimes import available_backends
        from edgekit.vos.export import export_bundle
        targets = ["onnx"] + (["openvino"] if "openvino" in available_backends() else [])
        if log:
            log(f"exporting the built-in VOS model to {root} (once)")
        root.mkdir(parents=True, exist_ok=True)
        export_bundle(root, targets=targets, progress=log)
    return path


def open_pipeline(backend: str, bundle: str | None = None, log=None, threads: int | None = None):
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}", f"use one of: {', '.join(BACKENDS)}")
    if backend == "torch":
        if bundle:
            raise UsageError("--backend torch runs the built-in PyTorch model, not a bundle",
                             "drop --bundle, or pick --backend onnxruntime|openvino")
        if log:
            log("loading the PyTorch model")
        import torch
        if threads:
            torch.set_num_threads(threads)
        from edgekit.vos.model import torch_pipeline
        return torch_pipeline()
    import edgekit.runtimes as rt
    path = Path(bundle) if bundle else builtin_bundle(log)
    opts = {"threads": threads} if threads else {}
    pipe = rt.load(path, backend=backend, **opts)
    if getattr(pipe, "kind", None) != "vos_skip":
        raise UsageError(f"bundle {path} is not a skip-path VOS bundle", "export one with edgekit.vos.export")
    return pipe


def segment(video: str, mask: str, out: str, tau: float = 0.7, backend: str = "onnxruntime",
            bundle: str | None = None, max_frames: int | None = None, gif: bool = True,
            threads: int | None = None, log=None, frame_done=None) -> dict:
    """Segment ``video`` from its first-frame ``mask``; ``log(stage)`` reports stages, ``frame_done(n)``
    each finished frame (the CLI's progress)."""
    from edgekit.runtimes.pipelines.vos import VOSPipeline
    from edgekit.vos import io as vio
    if not 0.0 <= tau <= 1.0:
        raise UsageError(f"--tau must be in [0, 1], got {tau}", "e.g. --tau 0.7; 1 never reuses")
    if max_frames is not None and max_frames < 1:
        raise UsageError(f"--max-frames must be >= 1, got {max_frames}", "omit it to read the whole video")
    frames, info = vio.open_video(video, max_frames)
    m0 = vio.read_mask(mask)
    VOSPipeline.check_mask(m0, (info["height"], info["width"]))  # fail before any export/writing
    ids = vio.mask_object_ids(mask)
    if ids:
        warn(f"the mask holds {len(ids)} object ids {ids}; the model tracks one object, "
             "so their union is tracked (give a mask with only the wanted object to track it alone)")
    writer = vio.MaskWriter(out)  # refuses a non-empty --out before any slow work
    try:
        pipe = open_pipeline(backend, bundle, log, threads)
    except BaseException:
        writer.abort()
        raise
    overlays: list = []
    scale = min(1.0, 320 / max(info["height"], info["width"]))
    held = {}

    def keep_frames(it):
        for f in it:
            held["f"] = f
            yield f

    def on_frame(i, m, reused):
        writer.add(m * 255)
        if frame_done:
            frame_done(i + 1)
        if gif:
            f = held["f"]
            if scale < 1:
                step = max(1, int(round(1 / scale)))
                f, m = f[::step, ::step], m[::step, ::step]
            overlays.append(vio.overlay(f, m))

    if log:
        log(f"segmenting with {pipe.backend_name}")
    t0 = time.perf_counter()
    try:
        res = pipe.run(keep_frames(frames), m0, tau=tau, on_frame=on_frame, keep=False)
        if gif:
            vio.save_gif(writer.staging / "overlay.gif", overlays, fps=min(info["fps"], 15.0))
        outdir = writer.commit()
    except BaseException:
        writer.abort()
        raise
    wall = time.perf_counter() - t0
    n = len(res.reused)
    return {"video": str(video), "frames": n, "width": info["width"], "height": info["height"],
            "tau": tau, "backend": pipe.backend_name, "reuse_rate": round(res.reuse_rate, 4),
            "reused_frames": int(sum(res.reused)),
            "fps": round(res.fps, 2) if n > 1 else None,
            "fps_end_to_end": round(n / wall, 2) if wall > 0 else None,
            "out": str(outdir), "overlay": str(outdir / "overlay.gif") if gif else None,
            "merged_object_ids": ids or None}
