"""Normalise any PyTorch model to the shape every exporter and the reference agree on:
positional tensor inputs in a fixed order, and a flat tuple of tensor outputs."""
from __future__ import annotations

import inspect
import re
from typing import Any

import numpy as np


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
    """PyTorch outputs of the adapted module for each case (no grad, eval mode)."""
    import torch

    refs = []
    with torch.inference_mode():
        for feeds in cases:
            outs = module(*to_tensors(feeds, input_names))
            if len(outs) != len(output_names):
                from edgekit.errors import UsageError

                raise UsageError(f"the model returns {len(outs)} output tensor(s) but {len(output_names)} output "
                                 f"name(s) were given ({output_names})",
                                 "give one name per output tensor, or none for the defaults")
            refs.append({n: o.detach().cpu().numpy() for n, o in zip(output_names, outs)})
    return refs


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
