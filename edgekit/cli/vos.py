"""CLI: `edgekit vos` — skip-path video object segmentation with the built-in model.

  edgekit vos VIDEO --mask first_mask.png --out masks/ [--tau 0.7]
              [--backend onnxruntime|openvino|torch] [--bundle B.edgekit] [--max-frames N] [--json]
  edgekit vos-export --out DIR [--target onnx,openvino] [--tau 0.7] [--json]

Writes one 0/255 PNG mask per frame (video size) into --out plus overlay.gif. Without --bundle,
the built-in model is exported once to a cache folder ($EDGEKIT_CACHE or ~/.cache/edgekit; needs
torch) and that bundle is run torch-free. Import is light: torch only inside the functions.
"""
from __future__ import annotations

from typing import Optional

import typer

from edgekit.core.errors import UsageError
from edgekit.vos.segment import segment


def register(app: typer.Typer) -> None:
    @app.command("vos")
    def vos_cmd(
        video: str = typer.Argument(..., help="video file (.mp4 ...), .npy [T,H,W,3] or a folder of frames"),
        mask: str = typer.Option(..., "--mask", help="first-frame mask PNG (nonzero = object), video size"),
        out: str = typer.Option(..., "--out", help="new or empty folder for 00000.png ... + overlay.gif"),
        tau: float = typer.Option(0.7, "--tau", help="reuse when the gate's p_reuse > tau; 1 = never reuse"),
        backend: str = typer.Option("onnxruntime", "--backend", help="onnxruntime | openvino | torch"),
        bundle: Optional[str] = typer.Option(None, "--bundle", help="an exported vos-skip bundle (default: built-in)"),
        max_frames: Optional[int] = typer.Option(None, "--max-frames", help="stop after N frames"),
        gif: bool = typer.Option(True, "--gif/--no-gif", help="write overlay.gif"),
        threads: Optional[int] = typer.Option(None, "--threads", help="inference threads"),
        as_json: bool = typer.Option(False, "--json", help="print a JSON report"),
    ) -> None:
        """Segment an object through a video from its first-frame mask (skip-path VOS)."""
        from edgekit.cli.output import emit_json, err, progress
        from edgekit.cli.output import out as console
        from edgekit.core.notices import quiet_noise

        every = 1 if err.is_terminal else 25  # plain --verbose lines in a pipe: every 25 frames
        with progress("opening the video", quiet=as_json) as st, quiet_noise():
            def frame_done(n: int) -> None:
                if n == 1 or n % every == 0 or n == max_frames:
                    st.update(f"segmenting: frame {n}" + (f" of {max_frames}" if max_frames else ""))

            rep = segment(video, mask, out, tau, backend, bundle, max_frames, gif, threads, st.update, frame_done)
        if as_json:
            emit_json(rep)
            return
        fps = f"{rep['fps']:.1f} FPS (model loop)" if rep["fps"] else "single frame"
        console.print(f"{rep['frames']} frames, reuse {100 * rep['reuse_rate']:.1f}%, {fps}, "
                      f"backend {rep['backend']} -> {rep['out']}")

    @app.command("vos-export")
    def vos_export_cmd(
        out: str = typer.Option(..., "--out", help="folder for vos-skip.edgekit"),
        target: str = typer.Option("onnx,openvino", "--target", help="comma list: onnx, openvino"),
        tau: float = typer.Option(0.7, "--tau", help="default reuse threshold stored in the bundle"),
        as_json: bool = typer.Option(False, "--json", help="print a JSON report"),
    ) -> None:
        """Export the built-in skip-path VOS model (4 graphs + vos_skip pipeline) to a bundle."""
        from edgekit.cli.output import emit_json, progress
        from edgekit.cli.output import out as console
        from edgekit.core.notices import quiet_noise
        from edgekit.vos.export import export_bundle
        if not 0.0 <= tau <= 1.0:
            raise UsageError(f"--tau must be in [0, 1], got {tau}", "e.g. --tau 0.7; 1 never reuses")
        with progress("exporting the VOS model", quiet=as_json) as st, quiet_noise():
            b = export_bundle(out, targets=[t.strip() for t in target.split(",") if t.strip()], tau=tau,
                              progress=st.update)
        arts = [{"graph": a.graph, "target": a.target, "precision": a.precision, "status": a.status}
                for a in b.manifest.artifacts]
        if as_json:
            emit_json({"bundle": str(b.root), "pipeline": b.manifest.pipeline, "artifacts": arts})
            return
        console.print(f"wrote {b.root} ({len(arts)} artifacts: "
                      + ", ".join(f"{a['graph']}/{a['target']}:{a['status']}" for a in arts) + ")")
