"""Normalise any PyTorch model to the shape every exporter and the reference agree on:
positional tensor inputs in a fixed order, and a flat tuple of tensor outputs."""
from __future__ import annotations

import contextlib
import functools
import gc
import inspect
import re
import warnings
from typing import Any

import numpy as np
from edgekit.runtimes.bench import check_counts, summarize, time_calls


def flatten_outputs(out: Any) -> tuple:
    """Tensors of a model output (tensor, tuple/list, dict, HF ModelOutput), in a stable order."""
    import torch

    if isinstance(out, torch.Tensor):
        return (out,)
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    if isinstance(out, dict):
        out = tuple(out.values())
    flat: list = []
    for o in out:
        if o is None:
            continue
        flat.extend(flatten_outputs(o))
    return tuple(flat)


def as_input_array(name: str, a: Any) -> np.ndarray:
    """One example input as an array; a dict/list/None (a forward taking a structure) is refused by name."""
    from edgekit.core.errors import UsageError

    if isinstance(a, (dict, list, tuple)) or a is None:
        kind = "None" if a is None else f"a {type(a).__name__}" + (f" (keys {list(a)[:5]})" if isinstance(a, dict) else "")
        raise UsageError(f"example input {name!r} is {kind}, not a tensor: exported graphs take flat tensor inputs",
                         "wrap the model in an nn.Module whose forward takes one tensor per input "
                         "(e.g. forward(self, a, b): return model({'a': a, 'b': b})) and export that")
    if hasattr(a, "detach"):
        _numpy_dtype(a, f"example input {name!r}", "give float32 example inputs and cast inside forward "
                     "(x.to(torch.bfloat16)), or export model.float()")
    arr = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
    if arr.dtype == object:
        raise UsageError(f"example input {name!r} is not a numeric tensor (numpy dtype object)",
                         "give one numeric tensor or array per input")
    return arr


def _numpy_dtype(t: Any, what: str, fix: str) -> None:
    """Refuse a torch tensor whose dtype numpy (so the bundle's IO and every runtime) cannot hold."""
    import torch

    try:
        torch.empty(0, dtype=t.dtype).numpy()
    except TypeError:
        from edgekit.core.errors import UsageError

        raise UsageError(f"{what} is {str(t.dtype).replace('torch.', '')}, which numpy and the runtimes cannot "
                         "hold as a bundle input/output", fix) from None


@contextlib.contextmanager
def modes_kept(*modules: Any):
    """Restore every submodule's ``training`` flag on exit: exporting runs the model in eval mode but
    must not leave a user's model (e.g. one mid-training) switched to eval."""
    flags = [(m, m.training) for mod in modules if hasattr(mod, "modules") for m in mod.modules()]
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


def keeping_modes(fn):
    """Decorator: ``fn(model, ...)`` with ``modes_kept(model)`` (a ModelSource's module too)."""
    @functools.wraps(fn)
    def wrapper(model: Any, *args: Any, **kwargs: Any):
        with modes_kept(getattr(model, "module", model)):
            return fn(model, *args, **kwargs)
    return wrapper


def adapt(module: Any, input_names: list[str]):
    """Wrap ``module`` so it takes positional inputs (passed by keyword when its forward names
    them) and returns a flat tuple of tensors."""
    import torch

    try:
        params = inspect.signature(module.forward).parameters
        order = [n for n, p in params.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        # by keyword only when the names are forward's parameters but not its leading positional ones
        # (e.g. a transformers model fed input_ids + token_type_ids without attention_mask)
        by_kw = (order[:len(input_names)] != list(input_names) and all(n in params for n in input_names)
                 and not any(p.kind == p.VAR_POSITIONAL for p in params.values()))
    except (TypeError, ValueError):
        by_kw = False

    class Adapted(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def raw(self, *args):
            """The wrapped model's own output structure (dicts keep their keys)."""
            return self.inner(**dict(zip(input_names, args))) if by_kw else self.inner(*args)

        def forward(self, *args):
            return flatten_outputs(self.raw(*args))

    wrapped = Adapted()
    # a TorchScript module cannot be traced from inside a Python wrapper: exporters that trace
    # (the TorchScript ONNX exporter) take it as it is; it already returns tensors positionally
    wrapped.script = module if isinstance(module, torch.jit.ScriptModule) else None
    try:
        wrapped.eval()
    except NotImplementedError:  # unlifted torch.export programs refuse train()/eval(); they are eval already
        wrapped.training = False
    return wrapped


def to_tensors(feeds: dict[str, np.ndarray], names: list[str]) -> tuple:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in names)


def reference(module: Any, cases: list[dict[str, np.ndarray]], input_names: list[str],
              output_names: list[str]) -> list[dict[str, np.ndarray]]:
    """PyTorch outputs of the adapted module for each case (no grad, eval mode).

    Without the MultiheadAttention/TransformerEncoder inference fast path: exported graphs compute
    the regular path, and the fast path differs from it where it is free to (it writes 0 at positions
    a key padding mask hides, via nested tensors), which failed every padded-mask transformer."""
    import torch

    refs = []
    with torch.inference_mode(), _mha_fastpath(False):
        for feeds in cases:
            outs = module(*to_tensors(feeds, input_names))
            if len(outs) != len(output_names):
                from edgekit.core.errors import UsageError

                raise UsageError(f"the model returns {len(outs)} output tensor(s) but {len(output_names)} output "
                                 f"name(s) were given ({output_names})",
                                 "give one name per output tensor, or none for the defaults")
            for n, o in zip(output_names, outs):
                _numpy_dtype(o, f"output {n!r}", "return float32 from forward (e.g. out.float()), or export model.float()")
            refs.append({n: o.detach().cpu().numpy() for n, o in zip(output_names, outs)})
    return refs


@contextlib.contextmanager
def _mha_fastpath(enabled: bool):
    import torch

    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "get_fastpath_enabled"):
        yield
        return
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)


def dim_symbol(name: str) -> str:
    """A valid torch.export Dim name for a manifest symbol ("batch", "seq-len" -> "seq_len")."""
    s = re.sub(r"\W", "_", name)
    return s if s[:1].isalpha() else "d_" + s


def export_args(example_inputs: dict, names: list[str], dynamic: dict | None) -> tuple[tuple, tuple | None]:
    """Example args for torch.export and its ``dynamic_shapes``.

    torch.export specialises dims of size 0/1, so dynamic axes are traced at size >= 2. The adapted
    module's forward takes ``*args``, so the per-input specs are nested under that one parameter.
    """
    import torch

    args = []
    for n in names:
        a = example_inputs[n]
        for axis in (dynamic or {}).get(n, {}):
            if a.shape[int(axis)] < 2:
                a = torch.cat([a, a], dim=int(axis))
        args.append(a)
    if not dynamic:
        return tuple(args), None
    dims: dict[str, Any] = {}
    shapes = []
    for n in names:
        axes = dynamic.get(n)
        shapes.append({int(ax): dims.setdefault(sym, torch.export.Dim(dim_symbol(sym), min=1))
                       for ax, sym in axes.items()} if axes else None)
    return tuple(args), (tuple(shapes),)


def torch_eager(module: Any, feeds: dict[str, np.ndarray], warmup: int = 20, iters: int = 200) -> dict:
    """Latency of the PyTorch module itself (eager, inference mode) on the same inputs."""
    import torch

    check_counts(iters, warmup)
    gc.collect()  # backend sessions left in reference cycles keep thread pools that starve torch's OpenMP
    names = list(feeds)
    m = adapt(module, names)
    args = to_tensors(feeds, names)
    with torch.inference_mode():
        ns = time_calls(lambda a: m(*a), args, warmup, iters)
    return summarize(ns, next(iter(feeds.values())).shape[0])


@contextlib.contextmanager
def tracer_warnings():
    """Collect the first lines of torch.jit TracerWarnings (a trace baked in Python control flow or
    values) raised inside the block; every other warning is passed on as usual."""
    found: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield found
    for w in caught:
        if w.category.__name__ == "TracerWarning":
            found.append(str(w.message).split(".")[0][:160])
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    found[:] = sorted(set(found))
