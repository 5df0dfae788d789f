"""Normalise any PyTorch model to the shape every exporter and the reference agree on:
positional tensor inputs in a fixed order, and a flat tuple of tensor outputs."""
from __future__ import annotations

import inspect
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

        def forward(self, *args):
            out = self.inner(**dict(zip(input_names, args))) if by_kw else self.inner(*args)
            return flatten_outputs(out)

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
            refs.append({n: o.detach().cpu().numpy() for n, o in zip(output_names, outs)})
    return refs
