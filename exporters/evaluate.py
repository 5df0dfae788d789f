"""``edgekit eval``: accuracy of every artifact of a bundle on labeled data, and its agreement with the
PyTorch reference, in one table -- the number to look at before shipping an int8 artifact. Torch-free.

Data: an ``.npz`` with one array per model input (samples along axis 0) plus ``labels`` (integer class
per sample; optional) and optionally ``reference`` (PyTorch's outputs for the same samples); or a
directory of images in one sub-directory per class (``DIR/<label>/*.jpg``), preprocessed as the
bundle's ``metadata.preprocessing`` says (``x = (raw * scale - mean) / std``, raw = pixels mapped to
``raw_range``). Without ``reference`` the bundle's validated fp32 artifact stands in for PyTorch (it
matched PyTorch within 1e-4 of the output scale at export) and the table says so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
from edgekit.exporters.metrics import OutputStats, normalize_task, output_role, padding_mask
from edgekit.runtimes.bench import backend_for
from edgekit.runtimes.registry import open_graph

from edgekit.core.bundle import Bundle
from edgekit.core.errors import DataError, EdgekitError, MissingFileError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
LABEL_KEYS = ("labels", "label", "y")


def load_labeled(path: str | Path, bundle: Bundle, graph: str = "main") -> tuple[dict, np.ndarray | None, Any]:
    """(inputs {name: [N, ...]}, labels [N] or None, reference outputs or None) from an .npz or image dir."""
    p = Path(path)
    specs = bundle.graph(graph).inputs
    if not p.exists():
        raise MissingFileError(f"eval data {str(p)!r} does not exist", "pass --data FILE.npz or a directory of images")
    if p.is_dir():
        return (*_image_dir(p, bundle, specs), None)
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {p.name}: {e}", "write it with numpy.savez(path, x=inputs, labels=labels)") from None
    labels = next((arrays.pop(k) for k in LABEL_KEYS if k in arrays), None)
    ref = {k[4:]: arrays.pop(k) for k in list(arrays) if k.startswith("ref.")} or arrays.pop("reference", None)
    names = [s.name for s in specs]
    if len(names) == 1 and names[0] not in arrays and len(arrays) == 1:
        arrays = {names[0]: next(iter(arrays.values()))}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise DataError(f"{p.name} has no array for input(s) {missing} (keys: {sorted(arrays)})",
                        f"save one array per input ({', '.join(names)}) with samples along axis 0, plus labels")
    feeds = {n: arrays[n] for n in names}
    counts = {len(a) for a in feeds.values()} | ({len(labels)} if labels is not None else set())
    if len(counts) != 1:
        raise DataError(f"{p.name}: inputs and labels hold different sample counts {sorted(counts)}",
                        "give every array the same number of samples along axis 0")
    for s in specs:
        if feeds[s.name].ndim != s.rank:
            raise DataError(f"{p.name}: {s.name!r} has shape {list(feeds[s.name].shape)}, the model takes {s.describe()}",
                            "stack the samples along axis 0 with the model's input rank")
        feeds[s.name] = feeds[s.name].astype(s.dtype, copy=False)
    return feeds, None if labels is None else np.asarray(labels).astype(np.int64).reshape(-1), ref


def _image_dir(root: Path, bundle: Bundle, specs: list) -> tuple[dict, np.ndarray]:
    pre = bundle.manifest.metadata.get("preprocessing")
    if len(specs) != 1 or not isinstance(pre, dict) or "shape" not in pre:
        raise DataError(f"{bundle.root.name} carries no image preprocessing metadata, so a directory of images "
                        "cannot be turned into its inputs", "pass an .npz of preprocessed inputs + labels instead")
    try:
        from PIL import Image
    except ImportError:
        raise DataError("reading an image directory needs Pillow", "pip install pillow (or pass an .npz)") from None
    labels_meta = [str(x) for x in bundle.manifest.metadata.get("labels", [])]
    classes = sorted(d for d in root.iterdir() if d.is_dir())
    xs, ys = [], []
    for d in classes:
        if d.name in labels_meta:
            y = labels_meta.index(d.name)
        elif d.name.isdigit():
            y = int(d.name)
        else:
            raise DataError(f"image folder {d.name!r} is neither one of the bundle's labels nor a class index",
                            "name each sub-directory after a label (edgekit info lists them) or its index")
        for f in sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES):
            xs.append(preprocess_image(Image.open(f), pre))
            ys.append(y)
    if not xs:
        raise DataError(f"{root} holds no images in class sub-directories", "use DIR/<label>/*.jpg")
    return {specs[0].name: np.stack(xs).astype(specs[0].dtype)}, np.asarray(ys, np.int64)


def preprocess_image(img: Any, pre: dict) -> np.ndarray:
    """One PIL image -> the model's input sample: centre square crop, resize, raw range, normalise, layout."""
    c, h, w = pre["shape"] if pre.get("layout", "NCHW") == "NCHW" else (pre["shape"][2], *pre["shape"][:2])
    img = img.convert("L" if c == 1 else "RGB")
    side = min(img.size)
    left, top = (img.size[0] - side) // 2, (img.size[1] - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((w, h), 2)  # 2 = bilinear
    a = np.asarray(img, np.float32).reshape(h, w, c)
    lo, hi = pre.get("raw_range", [0, 255])
    raw = lo + a / 255.0 * (hi - lo)
    x = (raw * float(pre.get("scale", 1.0)) - np.asarray(pre.get("mean", [0.0]), np.float32)) \
        / np.asarray(pre.get("std", [1.0]), np.float32)
    return x.transpose(2, 0, 1) if pre.get("layout", "NCHW") == "NCHW" else x


def _run_all(sess: Any, feeds: dict, batch: int) -> dict[str, np.ndarray]:
    n = len(next(iter(feeds.values())))
    fixed = any(isinstance(s.shape[0], int) for s in sess.inputs if s.shape)
    step = next((s.shape[0] for s in sess.inputs if s.shape and isinstance(s.shape[0], int)), batch) if fixed else batch
    outs: dict[str, list] = {}
    for i in range(0, n, step):
        part = {k: v[i:i + step] for k, v in feeds.items()}
        if len(next(iter(part.values()))) != step and fixed:
            raise DataError(f"the model takes a fixed batch of {step} and {n} samples do not split into it",
                            f"give a multiple of {step} samples")
        for k, v in sess.run(part).items():
            outs.setdefault(k, []).append(np.asarray(v))
    return {k: np.concatenate(v) for k, v in outs.items()}


def evaluate(bundle: Bundle, data: str | Path, graph: str = "main", batch: int = 32, targets: list[str] | None = None,
             progress: Callable[[str], None] | None = None) -> dict:
    """One row per artifact runnable here: accuracy on the labels, agreement with the reference."""
    feeds, labels, ref = load_labeled(data, bundle, graph)
    arts = [a for a in bundle.manifest.artifacts if a.graph == graph and (not targets or a.target in targets)]
    outputs: dict[int, dict] = {}
    rows = []
    for i, a in enumerate(arts):
        row: dict[str, Any] = {"target": a.target, "precision": a.precision, "status": a.status}
        rows.append(row)
        if a.status not in ("ok", "not-validated") or backend_for(a.target) is None:
            row["skipped"] = a.status_reason or "not runnable"
            continue
        try:
            if progress:
                progress(f"running {a.target} {a.precision} on {len(next(iter(feeds.values())))} samples")
            sess = open_graph(bundle, graph, backend_for(a.target), a.precision)
            outputs[i] = _run_all(sess, feeds, batch)
            row["backend"] = sess.backend_name
        except EdgekitError as e:
            row["skipped"] = str(e)
    how = "reference outputs given with the data (PyTorch)"
    if ref is None:
        fp32 = next((i for i, a in enumerate(arts) if i in outputs and a.precision == "fp32" and a.status == "ok"), None)
        if fp32 is not None:
            ref = outputs[fp32]
            how = f"the {arts[fp32].target} fp32 artifact, which matched PyTorch within 1e-4 of its output scale"
        else:
            how = "none (no validated fp32 artifact ran here and the data carries no reference)"
    if isinstance(ref, np.ndarray):
        ref = {bundle.graph(graph).outputs[0].name: ref}
    task = normalize_task(bundle.manifest.metadata.get("task"))
    mask = padding_mask(feeds)
    for i, out in outputs.items():
        rows[i].update(_scores(out, labels, ref, task, mask))
    return {"bundle": str(bundle.root), "graph": graph, "samples": len(next(iter(feeds.values()))),
            "labels": labels is not None, "reference": how, "artifacts": rows}


def _scores(out: dict, labels: np.ndarray | None, ref: dict | None, task: str, mask: np.ndarray | None) -> dict:
    name = next(iter(out))
    got = out[name]
    role = output_role(name, got, task)[0]
    res: dict[str, Any] = {"output": name, "role": role}
    if labels is not None and role == "class-scores" and got.ndim == 2:
        res["accuracy"] = float((got.argmax(-1) == labels).mean())
        top5 = np.argsort(-got, -1)[:, :5]
        res["top5_accuracy"] = float((top5 == labels[:, None]).any(-1).mean())
    if ref is not None and name in ref and np.shape(ref[name]) == got.shape:
        st = OutputStats(role)
        st.add(ref[name], got, mask)
        r = st.result()
        res.update({k: r[k] for k in ("top1_agreement", "top5_contains", "sqnr_db", "cos_min") if k in r})
    return res
