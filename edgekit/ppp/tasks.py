"""The built-in PPP tasks (data, training recipe, checkpoints) and personalization of any source:
a gated bundle (torch-free, ONNX rewrite) or a checkpoint / built-in (PyTorch)."""
from __future__ import annotations

from pathlib import Path

from edgekit.core.errors import UsageError

WEIGHTS = Path(__file__).resolve().parent / "weights"
TASKS = {"fashion": {"cfg": "fashion", "epochs": 6, "file": "ppp_fashion.safetensors"},
         "digits": {"cfg": "tiny", "epochs": 30, "file": "ppp_digits.safetensors", "kw": {"lr": 1e-2}},
         "kws": {"cfg": "kws", "epochs": 30, "file": "ppp_kws.safetensors",
                 "kw": {"augment": "specaug", "weight_decay": 5e-2}}}


def task_data(task: str):
    """(x_train, y_train, x_test, y_test, meta) for a built-in PPP task."""
    if task == "fashion":
        from edgekit.data import fashion_mnist as fm

        x, y = fm.load("train")
        xt, yt = fm.load("test")
        meta = {"dataset": "fashion-mnist", "labels": fm.LABELS, "preprocessing": fm.PREPROCESSING}
    elif task == "digits":
        from edgekit.data import fashion_mnist as fm

        x, y = fm.load_digits("train")
        xt, yt = fm.load_digits("test")
        meta = {"dataset": "sklearn-digits", "labels": [str(i) for i in range(10)],
                "preprocessing": fm.DIGITS_PREPROCESSING}
    elif task == "kws":
        from edgekit.ppp import kws

        x, y, xt, yt, meta = kws.load()
    else:
        raise UsageError(f"unknown PPP task {task!r}", f"use one of {', '.join(TASKS)}")
    return x, y, xt, yt, meta


def train_builtin(task: str, epochs: int | None = None, seed: int = 0, out=None, log=print) -> Path:
    import torch

    torch.set_num_threads(1)
    from edgekit.ppp.nets import build_gated
    from edgekit.ppp.personalize import save_checkpoint
    from edgekit.ppp.train import evaluate, train_gated

    spec = TASKS[task]
    x, y, xt, yt, meta = task_data(task)
    torch.manual_seed(seed)
    gated = build_gated(spec["cfg"], len(meta["labels"]))
    gated.cfg["input_shape"] = list(x.shape[1:])
    kw = dict(spec.get("kw", {}))
    hist = train_gated(gated, x, y, epochs=epochs or spec["epochs"], seed=seed, log=log, x_val=xt, y_val=yt, **kw)
    meta.update({"task": task, "seed": seed, "epochs": epochs or spec["epochs"], "input_name": "x",
                 "test_acc": round(evaluate(gated, xt, yt), 4), "history": hist["history"], "train_kwargs": kw})
    out = Path(out) if out else WEIGHTS / spec["file"]
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(gated, out, meta)


def resolve_checkpoint(src: str) -> Path:
    if src.startswith("builtin:"):
        name = src.split(":", 1)[1]
        files = {"ppp-fashion": "ppp_fashion.safetensors", "ppp-kws": "ppp_kws.safetensors",
                 "ppp-digits": "ppp_digits.safetensors"}
        name = name.removesuffix("-gated")  # builtin:ppp-fashion-gated (the `edgekit export` name) = same model
        if name not in files:
            raise UsageError(f"{src} is not a PPP built-in", f"use one of {', '.join('builtin:' + k for k in files)}")
        return WEIGHTS / files[name]
    p = Path(src)
    if not p.exists():
        raise UsageError(f"no gated bundle or PPP checkpoint at {src}",
                         "give the NAME.edgekit folder from `edgekit ppp export`, a .safetensors checkpoint, "
                         "or builtin:ppp-fashion / builtin:ppp-kws")
    return p


def personalize_any(src: str, data: str, out: str, keep_ratio: float | None = None, threshold: float = 0.5,
                    name: str | None = None, openvino: bool | None = None) -> dict:
    """Dispatch: bundle directory -> torch-free ONNX path; checkpoint -> PyTorch path."""
    p = Path(src)
    if p.is_dir():
        from edgekit.runtimes.pipelines.ppp import personalize_bundle

        return personalize_bundle(p, data, out, keep_ratio=keep_ratio, threshold=threshold, name=name,
                                  openvino=openvino)
    from edgekit.ppp.export import personalize_checkpoint

    return personalize_checkpoint(resolve_checkpoint(src), data, out, keep_ratio=keep_ratio,
                                  threshold=threshold, name=name)
