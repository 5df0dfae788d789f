"""PPP on the device: personalize a gated bundle with ONNX Runtime + ``onnx`` only (never torch).

    personalize_bundle("ppp-fashion-gated.edgekit", "personal.npz", "out/", keep_ratio=0.4)

1. run the personal samples through graph ``main`` -> gate probabilities of every gated unit
2. prototype + keep-masks with the same code as the PyTorch path (:mod:`ppp_proto`)
3. rewrite graph ``static``: slice every tensor the gate controls (found by sha256 in the
   initializers; ``ppp_gates.json`` says which axis), set the depthwise convs' ``group``, drop
   stale shape info, re-infer shapes, ``onnx.checker``
4. validate: the pruned graph against the full static graph with the closed channels' consumer
   weights zeroed (which is exactly the gated network with its gates frozen to the mask)
5. write a new bundle (atomic) with provenance, FLOPs / params / initializer bytes before and after.
"""
from __future__ import annotations

import hashlib
import io
import json
import platform
import re
import time
from pathlib import Path

import numpy as np
from edgekit.runtimes.pipelines.ppp_proto import (
    NotPPPError,
    check_output,
    keep_masks,
    load_personal,
    prototype,
)

from edgekit.core.bundle import (
    Artifact,
    Bundle,
    BundleWriter,
    Graph,
    Manifest,
    Validation,
)
from edgekit.core.errors import BundleError, ValidationFailed
from edgekit.core.notices import warn_replacing

GATES_FILE = "ppp_gates.json"
TOLERANCE = 1e-4


def _onnx():
    from edgekit.core.errors import BackendUnavailableError

    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise BackendUnavailableError("the `onnx` package is needed to rewrite the graph", "pip install onnx") from None
    return onnx, numpy_helper


def _ort_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path) if isinstance(path, Path) else path, sess_options=so,
                                providers=["CPUExecutionProvider"])


def gate_info(bundle: Bundle) -> dict:
    """The PPP gate map of a bundle, or NotPPPError."""
    md = bundle.manifest.metadata.get("ppp")
    if not md or GATES_FILE not in bundle.manifest.files or "static" not in bundle.manifest.graphs:
        raise NotPPPError(f"bundle {bundle.root.name} was not trained for PPP: it carries no gate outputs / {GATES_FILE}",
                          "export a gated model with `edgekit ppp export builtin:ppp-fashion` and personalize that")
    return json.loads(bundle.file(GATES_FILE).read_text())


def onnx_cost(model, sample_shape) -> dict:
    """MACs (reported as FLOPs) of Conv/Gemm/MatMul for one sample, parameter count, initializer bytes."""
    onnx, nh = _onnx()
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name: list(i.dims) for i in m.graph.initializer}
    real_inputs = [i for i in m.graph.input if i.name not in inits]
    dims = real_inputs[0].type.tensor_type.shape.dim
    for d, v in zip(dims, [1, *sample_shape]):
        d.ClearField("dim_param")
        d.dim_value = int(v)
    del m.graph.value_info[:]
    m = onnx.shape_inference.infer_shapes(m)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*m.graph.value_info, *m.graph.output]}
    macs = 0
    for n in m.graph.node:
        out = shapes.get(n.output[0])
        if n.op_type == "Conv" and n.input[1] in inits and out:
            w = inits[n.input[1]]
            macs += int(np.prod(out[1:])) * int(np.prod(w[1:]))
        elif n.op_type in ("Gemm", "MatMul") and n.input[1] in inits and out:
            w = inits[n.input[1]]
            macs += int(np.prod(out[1:])) * int(np.prod(w)) // max(1, out[-1])
    params = sum(int(np.prod(d)) for n, d in inits.items() if len(d) > 0)
    nbytes = sum(len(nh.to_array(i).tobytes()) for i in m.graph.initializer)
    return {"flops": macs, "params": params, "initializer_bytes": nbytes}


def _locate(model, units: list[dict]) -> dict:
    """param name -> (initializer index, transposed?) by sha256 of the float32 values."""
    _, nh = _onnx()
    by_hash: dict[str, tuple[int, bool]] = {}
    for i, init in enumerate(model.graph.initializer):
        a = nh.to_array(init)
        if a.dtype != np.float32:
            continue
        by_hash.setdefault(hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest(), (i, False))
        if a.ndim == 2:
            by_hash.setdefault(hashlib.sha256(np.ascontiguousarray(a.T).tobytes()).hexdigest(), (i, True))
    where = {}
    for u in units:
        for t in u["tensors"]:
            if t["sha256"] not in by_hash:
                raise BundleError(f"gate map names {t['param']} but the static graph has no such tensor",
                                  "re-export the gated bundle with `edgekit ppp export`")
            where[t["param"]] = by_hash[t["sha256"]]
    return where


def prune_onnx(model, gmap: dict, masks: list[np.ndarray], zero_only: bool = False):
    """Copy of the static graph with the closed channels removed (or, zero_only, their consumer
    weights zeroed: the masked reference)."""
    onnx, nh = _onnx()
    m = onnx.ModelProto()
    m.CopyFrom(model)
    where = _locate(m, gmap["units"])
    inits = m.graph.initializer
    for u, keep in zip(gmap["units"], masks):
        idx = np.flatnonzero(keep)
        for t in u["tensors"]:
            i, transposed = where[t["param"]]
            a = nh.to_array(inits[i])
            axis = (1 - t["axis"]) if transposed else t["axis"]
            if zero_only:
                if t["axis"] != 1:  # consumer side only
                    continue
                a = a.copy()
                sl = [slice(None)] * a.ndim
                sl[axis] = np.flatnonzero(~keep)
                a[tuple(sl)] = 0.0
            else:
                a = np.take(a, idx, axis=axis)
            inits[i].CopyFrom(nh.from_array(np.ascontiguousarray(a), inits[i].name))
        if u.get("depthwise") and not zero_only:
            dw_name = inits[where[u["depthwise"]][0]].name
            for n in m.graph.node:
                if n.op_type == "Conv" and n.input[1] == dw_name:
                    for att in n.attribute:
                        if att.name == "group":
                            att.i = int(len(idx))
    del m.graph.value_info[:]
    m = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    onnx.checker.check_model(m, full_check=True)
    return m


def personal_name(base: str) -> str:
    """The default name of a personalized bundle, the same on the torch-free and the PyTorch path: the
    base model's name with '_' as '-', without '-gated', plus '-ppp' (ppp_fashion, ppp-fashion-gated ->
    ppp-fashion-ppp)."""
    return re.sub(r"[_\s]+", "-", base).removesuffix("-gated") + "-ppp"


def _validate(pruned, reference, x: np.ndarray, input_name: str, output: str) -> tuple[Validation, bytes]:
    """The pruned graph vs the masked reference, and the first case as a stored reference
    (validation/main.npz, for `edgekit validate` on the device)."""
    rng = np.random.default_rng(0)
    cases = [x[: min(len(x), 64)], rng.standard_normal((3, *x.shape[1:])).astype(np.float32)]
    a, b = _ort_session(pruned.SerializeToString()), _ort_session(reference.SerializeToString())
    err, scale, stored = 0.0, 1.0, None
    for c in cases:
        got = a.run([output], {input_name: c})[0]
        ref = b.run([output], {input_name: c})[0]
        err = max(err, float(np.abs(got - ref).max()))
        scale = max(scale, float(np.abs(ref).max()))
        if stored is None:
            buf = io.BytesIO()
            np.savez(buf, **{f"in.{input_name}": c[:8], f"out.{output}": ref[:8]})
            stored = buf.getvalue()
    tol = TOLERANCE * scale
    return Validation(passed=err <= tol, max_abs_err=err, tolerance=tol, cases=sum(len(c) for c in cases),
                      where=f"onnxruntime on {platform.system()} {platform.machine()}",
                      detail={"reference": "static graph with closed channels' consumer weights zeroed",
                              "tolerance_rule": f"{TOLERANCE} x max(1, max|ref|)"}), stored


def _openvino_artifact(w, pruned_bytes: bytes, x: np.ndarray, input_name: str, output: str, tmp: Path):
    """Regenerate an OpenVINO IR from the pruned ONNX (when openvino is installed); validated vs ORT."""
    try:
        import openvino as ov
    except ImportError:
        return None
    src = tmp / "pruned.onnx"
    src.write_bytes(pruned_bytes)
    ir = tmp / "main.openvino"
    ir.mkdir()
    ov.save_model(ov.convert_model(str(src)), str(ir / "model.xml"), compress_to_fp16=False)
    compiled = ov.Core().compile_model(str(ir / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled({input_name: x})[compiled.output(0)]
    ref = _ort_session(pruned_bytes).run([output], {input_name: x})[0]
    err, scale = float(np.abs(got - ref).max()), max(1.0, float(np.abs(ref).max()))
    val = Validation(passed=err <= TOLERANCE * scale, max_abs_err=err, tolerance=TOLERANCE * scale, cases=len(x),
                     where=f"openvino CPU on {platform.system()} {platform.machine()}",
                     detail={"reference": "the pruned ONNX under onnxruntime"})
    art = Artifact(target="openvino", graph="main", precision="fp32", path="main.openvino",
                   toolchain={"openvino": ov.__version__, "torch": None}, validation=val,
                   status="ok" if val.passed else "failed",
                   status_reason=None if val.passed else f"validation failed: max abs err {err:.3g}",
                   extra={"produced_by": "edgekit.runtimes.pipelines.ppp", "source": "pruned ONNX"})
    w.add("main.openvino", ir)
    w.record(art)
    return art


def personalize_bundle(src, data, out, keep_ratio: float | None = None, threshold: float = 0.5,
                       name: str | None = None, openvino: bool | None = None) -> dict:
    """Torch-free PPP: gated bundle + personal samples -> new pruned bundle. Returns the info dict.
    ``openvino``: also write an OpenVINO IR of the pruned graph (None = when the source bundle has
    an OpenVINO artifact and openvino is installed)."""
    onnx, _ = _onnx()
    t0 = time.perf_counter()
    check_output(out, name)
    bundle = Bundle.load(src)
    gmap = gate_info(bundle)
    main = bundle.find("onnx", graph="main", precision="fp32")
    static = bundle.find("onnx", graph="static", precision="fp32")
    if main is None or static is None:
        raise NotPPPError(f"bundle {bundle.root.name} has no fp32 ONNX for graphs main and static",
                          "re-export the gated bundle with `edgekit ppp export`")
    sgraph = bundle.graph("static")
    in_spec = sgraph.inputs[0]
    shape = tuple(int(d) for d in in_spec.shape[1:])
    x = load_personal(data, in_spec.name, shape)  # checked before anything is written
    sess = _ort_session(bundle.path(main))
    gate_names = [u["gate_output"] for u in gmap["units"]]
    probs = [[] for _ in gate_names]
    for i in range(0, len(x), 256):
        for k, p in enumerate(sess.run(gate_names, {in_spec.name: x[i:i + 256]})):
            probs[k].append(p)
    proto = prototype([np.concatenate(p) for p in probs])
    masks = keep_masks(proto, keep_ratio=keep_ratio, threshold=threshold)
    full = onnx.load(str(bundle.path(static)))
    pruned = prune_onnx(full, gmap, masks)
    secs = time.perf_counter() - t0
    val, stored = _validate(pruned, prune_onnx(full, gmap, masks, zero_only=True), x, in_spec.name, gmap["output"])
    if not val.passed:
        raise ValidationFailed(f"pruned graph differs from the masked reference by {val.max_abs_err:.3g}",
                               "report this bug; the gate map may not match the graph")
    before, after = onnx_cost(full, shape), onnx_cost(pruned, shape)
    info = {"prototype_size": int(len(x)), "keep_ratio": keep_ratio, "threshold": None if keep_ratio else threshold,
            "kept_channels": [int(m.sum()) for m in masks], "channels": [int(m.size) for m in masks],
            "flops_before": before["flops"], "flops_after": after["flops"], "params_before": before["params"],
            "params_after": after["params"], "initializer_bytes_before": before["initializer_bytes"],
            "initializer_bytes_after": after["initializer_bytes"], "seconds": round(secs, 4)}
    md = {k: v for k, v in bundle.manifest.metadata.items() if k != "ppp"}
    md["provenance"] = {"method": "ppp", "path": "onnx (torch-free)", "base_model": bundle.manifest.name,
                        "base_bundle_sha256": {a.path: a.sha256 for a in bundle.manifest.artifacts}, **info,
                        "keep_masks": [np.flatnonzero(m).tolist() for m in masks]}
    name = name or personal_name(bundle.manifest.name)
    warn_replacing(Path(out) / f"{name}.edgekit")
    with BundleWriter(out, name) as w:
        g = Graph("main", [in_spec], [s for s in sgraph.outputs], {"example_shapes": {in_spec.name: [1, *shape]}})
        manifest = Manifest(name=name, inputs=list(g.inputs), outputs=list(g.outputs), graphs={"main": g}, metadata=md)
        w.add_file(manifest, "validation/main.npz", stored)  # `edgekit validate` re-checks against it
        art = Artifact(target="onnx", graph="main", precision="fp32", path="main.onnx",
                       toolchain={"onnx": onnx.__version__, "onnxruntime": _ort_version(), "torch": None},
                       validation=val, status="ok", extra={"produced_by": "edgekit.runtimes.pipelines.ppp"})
        blob = pruned.SerializeToString()
        w.add("main.onnx", blob)
        w.record(art)
        manifest.artifacts.append(art)
        if openvino is None:
            openvino = any(a.target == "openvino" for a in bundle.manifest.artifacts)
        if openvino:
            import tempfile

            with tempfile.TemporaryDirectory(prefix="ppp-ov-") as t:
                ov_art = _openvino_artifact(w, blob, x[:16], in_spec.name, gmap["output"], Path(t))
            if ov_art is not None:
                manifest.artifacts.append(ov_art)
        dest = w.commit(manifest)
    return {"bundle": str(dest), **info, "max_abs_err": val.max_abs_err}


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__

