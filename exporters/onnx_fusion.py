"""ONNX Runtime's transformer optimizer on BERT-family fp32 ONNX artifacts, kept only where it pays.

For a BERT-family graph (the bundle's ``model_type`` is one of BERT_FAMILY, or -- without one -- the graph
has attention and LayerNormalization), ``onnxruntime.transformers.optimizer.optimize_model(model_type=
"bert")`` fuses attention / skip-LayerNorm / GELU subgraphs into com.microsoft contrib ops. The fused graph
is a candidate: build.py validates it with the same routine as every artifact, times it against the
unfused graph (interleaved, on the stored example) and keeps the faster validated one; ``extra["fusion"]``
says which was kept and why. A fused graph runs on ONNX Runtime only (contrib ops), so the other targets
(OpenVINO, TensorRT, int8) are always built from the unfused graph. Option ``onnx.fusion`` = auto | off.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from edgekit.exporters.graph_kind import onnx_attention
from edgekit.exporters.job import ExportJob

BERT_FAMILY = ("bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra", "albert", "mpnet",
               "ernie", "mobilebert", "deberta", "deberta-v2")
MIN_GAIN = 0.97  # the fused graph is kept when its latency is at most this fraction of the unfused one's


def family(model: Any, job: ExportJob) -> tuple[bool, str]:
    mt = job.metadata.get("model_type")
    if mt:
        return mt in BERT_FAMILY, f"model_type={mt}" + ("" if mt in BERT_FAMILY else " is not BERT-family")
    attention, why = onnx_attention(model)
    has_ln = any(n.op_type == "LayerNormalization" for n in model.graph.node)
    return attention and has_ln, (f"graph: {why}" + ("" if has_ln else ", no LayerNormalization"))


def fused_candidate(path: Path, job: ExportJob) -> tuple[Path | None, dict]:
    """The fused graph beside ``path`` (or None) and what was done."""
    import onnx

    if str(job.options.get("fusion", "auto")).lower() == "off" or job.precision != "fp32":
        return None, {"applied": False, "why": "fusion off" if job.precision == "fp32" else "fp32 only"}
    model = onnx.load(str(path))
    bert, why = family(model, job)
    if not bert:
        return None, {"applied": False, "why": why}
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        opt = optimize_model(str(path), model_type="bert", num_heads=0, hidden_size=0)
    except Exception as e:  # the optimizer is an optimisation: keep the graph as exported
        return None, {"applied": False, "why": f"{why}; optimizer failed: {type(e).__name__}: {str(e)[:200]}"}
    fused = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
    if not fused:
        return None, {"applied": False, "why": f"{why}; the optimizer fused nothing"}
    out = path.with_name("model.fused.onnx")
    opt.save_model_to_file(str(out))
    return out, {"applied": True, "why": why, "fused_ops": fused}


def keep_faster(unfused: Path, fused: Path, validate: Callable[[Path], Any], runner: Callable[[Path], Callable],
                feeds: dict, info: dict) -> tuple[Path, Any, dict]:
    """(path to keep, the fused graph's Validation or None, fusion record). The fused graph must pass
    validation and be at least 3 % faster on the stored example (interleaved blocks) to be kept."""
    import numpy as np
    from edgekit.runtimes.autoselect import time_blocks

    v = validate(fused)
    if not v.passed:
        return unfused, None, {**info, "kept": "unfused", "reason": f"fused graph failed validation: "
                                                                   f"{(v.detail.get('failed') or ['?'])[0]}"}
    runs = [runner(unfused), runner(fused)]

    class _R:  # time_blocks times objects with .run
        def __init__(self, f):
            self.run = f

    t = time_blocks([_R(r) for r in runs], feeds, budget_s=1.0)
    med = [float(np.median(x)) for x in t]
    ratio = med[1] / med[0] if med[0] else 1.0
    rec = {**info, "fused_vs_unfused_latency": round(ratio, 3), "measured_on": "the stored example, this machine"}
    if ratio <= MIN_GAIN:
        return fused, v, {**rec, "kept": "fused", "reason": f"validated and {1 / ratio:.2f}x faster"}
    return unfused, None, {**rec, "kept": "unfused", "reason": f"fused graph not faster here ({ratio:.2f}x latency)"}
