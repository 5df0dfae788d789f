"""The user's own model for federated runs: ``--model pkg.module:function`` or
``--model path/to/file.py:function``.

The function is called as ``fn(in_dim, n_classes)`` on the server and on every node and must
return a ``torch.nn.Module`` mapping a float32 batch (N, in_dim) -- features flattened, as for the
built-in models -- to logits (N, n_classes); a model for images reshapes inside ``forward``.
A file reference goes into the run config as an absolute path (the ServerApp and ClientApps run in
other processes and working directories); a module must be importable on every node (PYTHONPATH).

:func:`check` tries the model on a few real examples before anything starts. Floating-point
state_dict entries are aggregated; integer buffers (BatchNorm's ``num_batches_tracked``) are
counters, kept from the server's core model (:func:`edgekit.federated.models.merge_fixed`).
Every problem is one UsageError naming it and the fix. Importing this module imports no torch.
"""
from __future__ import annotations

from functools import lru_cache

from edgekit.core.errors import UsageError, first_line
from edgekit.core.userimport import absolute_ref, file_of, is_callable_ref, load_callable

from .config import MODELS

FORMS = "mlp, cnn, package.module:function or path/to/file.py:function"
IMPORT_HINT = ("give --model as path/to/file.py:function, or package.module:function importable on every "
               "node (set PYTHONPATH)")
CONTRACT = ("it is called as fn(in_dim, n_classes) and must return a torch.nn.Module mapping a float32 "
            "(N, in_dim) batch to (N, n_classes) logits")
CHECK_EXAMPLES = 8


def model_ref(name: str) -> str:
    """A built-in name unchanged, ``path/file.py:fn`` with an absolute path; only the form is checked."""
    if name in MODELS:
        return name
    if is_callable_ref(name):
        return absolute_ref(name)
    raise UsageError(f"unknown model {name!r}", f"use {FORMS}")


def build(ref: str, in_dim: int, n_classes: int):
    """``fn(in_dim, n_classes)``, checked to be an nn.Module (UsageError otherwise)."""
    import torch

    fn = _function(ref, _stamp(ref))
    try:
        model = fn(int(in_dim), int(n_classes))
    except Exception as e:  # the user's code: any exception is a usage problem
        raise UsageError(f"calling {ref}({in_dim}, {n_classes}) failed: {type(e).__name__}: {first_line(e)}",
                         f"fix the function; {CONTRACT}") from None
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"{ref}({in_dim}, {n_classes}) returned {type(model).__name__}, not a torch.nn.Module",
                         f"return the model; {CONTRACT}")
    return model


def _stamp(ref: str):
    path = file_of(ref)
    try:
        return path.stat().st_mtime_ns if path is not None else None
    except OSError:
        return None


@lru_cache(maxsize=8)
def _function(ref: str, stamp):  # cached: every node and the server build the model many times
    return load_callable(ref, IMPORT_HINT)


def check(ref: str, x, n_classes: int, seed: int = 0) -> None:
    """Build the model and run it on a few real examples ``x`` (N, in_dim) before anything starts:
    finite float (N, n_classes) logits, a loss that trains its parameters, a state_dict of floating-point
    weights (integer buffers are kept from the core, other dtypes are refused)."""
    import numpy as np
    import torch

    from .models import build_model

    xs = torch.from_numpy(np.asarray(x[:CHECK_EXAMPLES], np.float32))
    n, in_dim = xs.shape
    model = build_model(ref, in_dim, n_classes, seed=seed)
    where = f"{ref}({in_dim}, {n_classes})"
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UsageError(f"{where} has no trainable parameters", "federated learning trains the model's parameters")
    for k, v in model.state_dict().items():  # integer/bool buffers are fine: kept from the core
        if torch.nn.parameter.is_lazy(v):
            raise UsageError(f"{where}: {k!r} is a lazy parameter (nn.LazyLinear, ...)",
                             "give its sizes: the server and every node must build the same shapes without data")
        if v.is_complex() or (v.is_floating_point() and v.dtype not in (torch.float32, torch.float64, torch.float16)):
            raise UsageError(f"{where}: state_dict entry {k!r} is {str(v.dtype)[6:]}, which cannot be sent and "
                             "averaged", "keep the model's weights in float32 (e.g. return model.float())")
    try:
        with torch.no_grad():
            out = model.eval()(xs)
    except Exception as e:
        raise UsageError(f"{where} fails on a batch of {n} examples of shape ({n}, {in_dim}): {type(e).__name__}: "
                         f"{first_line(e)}", "the model gets flattened float32 features (N, in_dim); "
                         "a model for images reshapes inside forward, e.g. x.view(-1, 1, 8, 8)") from None
    if not isinstance(out, torch.Tensor):
        raise UsageError(f"{where} returns {type(out).__name__} from forward, not a tensor", "return the logits")
    if tuple(out.shape) != (n, n_classes):
        raise UsageError(f"{where} maps ({n}, {in_dim}) to shape {tuple(out.shape)}, expected ({n}, {n_classes})",
                         "return one logit per class for every example")
    if not out.is_floating_point():
        raise UsageError(f"{where} returns {str(out.dtype)[6:]} logits", "return float logits")
    if not torch.isfinite(out).all():
        raise UsageError(f"{where} returns NaN or Inf logits on real examples", "check the model's forward")
    try:  # one training step's backward, as the clients will run it
        torch.nn.functional.cross_entropy(model.train()(xs), torch.zeros(n, dtype=torch.int64)).backward()
        trained = any(p.grad is not None for p in params)
    except Exception as e:
        raise UsageError(f"{where} cannot be trained: {type(e).__name__}: {first_line(e)}",
                         "the logits must depend on the parameters (no .detach() or torch.no_grad() in forward)") from None
    if not trained:
        raise UsageError(f"{where} cannot be trained: the loss reaches none of its parameters",
                         "the logits must depend on the parameters (no .detach() or torch.no_grad() in forward)")

def check_run(model: str, dataset: str, seed: int = 0) -> None:
    """:func:`check` the run's model on its data set's validation examples (built-in models too:
    cnn refuses features that are not a square image)."""
    from .data import load_dataset

    s = load_dataset(dataset, seed)
    check(model, s.val_x, s.n_classes, seed)
