"""Export the skip-path VOS model as one multi-graph bundle with a ``vos_skip`` pipeline entry."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.exporters.source import ModelSource
from edgekit.exporters.targets import pipeline_targets
from edgekit.vos.model import EMB, GRAPH_IO, KEY, VOSNet, load_builtin

NAME = "vos-skip"


def _extra_cases(model: VOSNet, rng: np.random.Generator) -> dict[str, list[dict[str, np.ndarray]]]:
    """Realistic validation inputs: features of real synthetic frames (not only random tensors)."""
    import torch

    from edgekit.vos.data import make_video
    frames, masks = make_video(200_000, frames=3, size=model.size)
    x = torch.from_numpy(frames.astype(np.float32) / 255.0).permute(0, 3, 1, 2).contiguous()
    with torch.inference_mode():
        f8 = model.stem(x).numpy()
    h, w = f8.shape[-2:]
    prev = (6.0 * (2.0 * masks[:, ::8, ::8].astype(np.float32) - 1.0))[:, None]
    cases = {"stem": [{"image": x[i:i + 1].numpy()} for i in range(1, 3)], "gate": [], "heavy": [], "light": []}
    for i in range(1, 3):
        t = np.abs(rng.standard_normal((1, EMB, h, w))).astype(np.float32)
        cases["gate"].append({"f8": f8[i:i + 1], "prev_score": prev[i:i + 1], "template": t})
        cases["heavy"].append({"f8": f8[i:i + 1], "prev_score": prev[i:i + 1],
                               "fg": rng.standard_normal((1, KEY)).astype(np.float32),
                               "bg": rng.standard_normal((1, KEY)).astype(np.float32)})
        cases["light"].append({"emb": t, "template": t * 0.9, "prev_score": prev[i:i + 1]})
    return cases


def export_bundle(out: str | Path = ".", model: VOSNet | None = None, targets=("onnx", "openvino"),
                  tau: float = 0.7, name: str = NAME, progress=None):
    """Export stem/gate/heavy/light + pipeline params; every graph is validated against PyTorch."""
    from edgekit.core.specs import TensorSpec
    from edgekit.exporters.build import GraphSource, export_graphs
    model = (model or load_builtin()).eval()
    ex = model.example_inputs()
    extra = _extra_cases(model, np.random.default_rng(1))
    graphs = {g: GraphSource(module=m, example_inputs={n: ex[g][n] for n in GRAPH_IO[g][0]},
                             output_names=list(GRAPH_IO[g][1]), extra_cases=extra[g])
              for g, m in model.graphs().items()}
    params = {"tau": float(tau), "size": list(model.size), "stride": 8, "emb_channels": EMB,
              "key_channels": KEY, "score_amp": 6.0,
              "gate": "reuse when p_reuse > tau; tau >= 1 never reuses"}
    inputs = [TensorSpec("frames", "uint8", ("frames", "height", "width", 3)),
              TensorSpec("first_mask", "uint8", ("height", "width"))]
    outputs = [TensorSpec("masks", "uint8", ("frames", "height", "width"))]
    meta = {"task": "video-object-segmentation",
            "preprocessing": {"input": "RGB uint8 frames [frames, height, width, 3] + a uint8 first-frame mask",
                              "resize": f"area to {model.size[1]}x{model.size[0]}", "scale": 1 / 255,
                              "formula": "x = raw * scale", "applied_by": "the vos_skip pipeline (in the runtime)"},
            "provenance": "EfficientNet-Lite0 (ImageNet, frozen) + heads trained on edgekit synthetic videos "
                          "(scripts/train_vos.py)",
            "paper": "arXiv:2012.11655 (skip-path semi-VOS with a reuse gate)"}
    return export_graphs(graphs, pipeline={"kind": "vos_skip", "params": params}, inputs=inputs,
                         outputs=outputs, targets=list(targets), out=out, name=name, metadata=meta,
                         progress=progress)


def vos_skip() -> ModelSource:
    def exporter(out: Path, targets: Any, name: str | None, progress: Any = None):
        return export_bundle(out, targets=pipeline_targets(targets), name=name or NAME, progress=progress)

    return ModelSource(module=None, example_inputs={}, output_names=[], exporter=exporter, name="vos-skip",
                       description="skip-path video object segmentation (4 graphs + vos_skip pipeline)")
