"""The user's own model for federated runs: ``--model pkg.module:function`` or
``--model path/to/file.py:function``.

The function is called as ``fn(in_dim, n_classes)`` on the server and on every node and must
return a ``torch.nn.Module`` mapping a float32 batch (N, in_dim) -- features flattened, as for the
built-in models -- to logits (N, n_classes); a model for images reshapes inside ``forward``.
A file reference goes into the run config as an absolute path (the ServerApp and ClientApps run in
other processes and working directories); a module must be importable on every node (PYTHONPATH).

:func:`edgekit.federated.models.check` tries the model on a few real examples before anything starts. Floating-point
state_dict entries are aggregated; integer buffers (BatchNorm's ``num_batches_tracked``) are
counters, kept from the server's core model (:func:`edgekit.federated.models.merge_fixed`).
Every problem is one UsageError naming it and the fix. Importing this module imports no torch.
"""
from __future__ import annotations

from functools import lru_cache

from edgekit.core.errors import UsageError, first_line
from edgekit.core.userimport import absolute_ref, file_of, is_callable_ref, load_callable

MODELS = ("mlp", "cnn")  # built by models.py; or the user's pkg.mod:fn / path/file.py:fn
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
