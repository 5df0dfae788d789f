"""Small models for federated experiments, and model <-> Flower record conversion.

Models are plain ``torch.nn`` modules described by a name (``mlp``, ``cnn``, or the user's
``pkg.mod:fn`` / ``path/file.py:fn``, see :mod:`edgekit.federated.usermodel`) and input/output
sizes, so the server and every client can build the same architecture from the run config alone.
Only floating-point state entries are aggregated; integer buffers are kept from the core
(:func:`merge_fixed`).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgekit.core.errors import UsageError


class MLP(nn.Module):
    def __init__(self, in_dim: int, n_classes: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Two conv layers for square grey images (8x8 digits or 28x28 Fashion-MNIST)."""

    def __init__(self, in_dim: int, n_classes: int, width: int = 16):
        super().__init__()
        self.side = int(round(in_dim ** 0.5))
        if self.side * self.side != in_dim:
            raise UsageError(f"cnn needs a square image input, got {in_dim} features",
                             "use --model mlp")
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
            nn.Flatten(), nn.Linear(8 * width, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.view(-1, 1, self.side, self.side))


def build_model(name: str, in_dim: int, n_classes: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if name == "mlp":
        return MLP(in_dim, n_classes, hidden=64 if in_dim <= 64 else 128)
    if name == "cnn":
        return SmallCNN(in_dim, n_classes)
    from . import usermodel

    return usermodel.build(usermodel.model_ref(name), in_dim, n_classes)  # UsageError for unknown names


State = dict[str, np.ndarray]


def get_state(model: nn.Module) -> State:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def set_state(model: nn.Module, state: State) -> nn.Module:
    model.load_state_dict({k: torch.from_numpy(np.asarray(v).copy()) for k, v in state.items()})
    return model


def is_float(v) -> bool:
    return np.asarray(v).dtype.kind == "f"


def float_keys(state: State) -> list[str]:
    """The entries that are averaged: floating-point weights and buffers (BatchNorm running stats)."""
    return [k for k, v in state.items() if is_float(v)]


def merge_fixed(new: State, core: State) -> State:
    """``new``'s floating-point entries (in the core's dtypes) with the core's other entries: integer
    buffers such as BatchNorm's ``num_batches_tracked`` are counters, never averaged or stepped."""
    return {k: np.asarray(new[k]).astype(v.dtype, copy=False) if is_float(v) else v for k, v in core.items()}


def state_to_record(state: State):
    from flwr.app import Array, ArrayRecord

    # np.asarray, not np.ascontiguousarray: that makes 0-d arrays (BatchNorm's num_batches_tracked) 1-d
    return ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in state.items()})


def record_to_state(record) -> State:
    return {k: arr.numpy() for k, arr in record.items()}


def state_bytes(state: State) -> int:
    return int(sum(np.asarray(v).nbytes for v in state.values()))


def shape_mismatch(state: State, reference: State) -> str | None:
    """Why ``state`` cannot stand in for ``reference`` (keys, shapes, dtypes, finiteness)."""
    if set(state) != set(reference):
        missing = sorted(set(reference) - set(state))
        extra = sorted(set(state) - set(reference))
        return f"array keys differ (missing {missing[:3]}, unexpected {extra[:3]})"
    for k, ref in reference.items():
        v = np.asarray(state[k])
        if v.shape != ref.shape:
            return f"array {k!r} has shape {tuple(v.shape)}, expected {tuple(ref.shape)}"
        if v.dtype != ref.dtype:
            return f"array {k!r} has dtype {v.dtype}, expected {ref.dtype}"
        if not np.isfinite(v).all():
            return f"array {k!r} contains NaN or Inf"
    return None


def train_local(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int = 1,
                lr: float = 0.05, batch_size: int = 32, seed: int = 0,
                logit_adjust: float = 0.0) -> dict[str, float]:
    """SGD(momentum) on local data; returns loss/accuracy on that data after training.

    ``logit_adjust`` = tau > 0 trains with the logit-adjusted (balanced softmax) loss
    CE(z + tau * log prior, y), where prior is this node's own label distribution (Laplace 1):
    a node that lacks a class is then not taught to suppress it, and its frequent classes do not
    crowd out the rest (label skew; Menon et al. 2021, FedLC 2022). The model itself is unchanged
    and predicts with plain z. The prior never leaves the node."""
    g = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(np.asarray(x, np.float32)), torch.from_numpy(np.asarray(y, np.int64))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    pairs = needs_pairs(model)
    adjust = None
    if logit_adjust > 0:
        with torch.no_grad():
            n_out = model.eval()(xt[:2]).shape[1]
        model.train()
        counts = np.bincount(yt.numpy(), minlength=n_out)[:n_out].astype(np.float64)
        adjust = torch.tensor(logit_adjust * np.log((counts + 1.0) / (counts.sum() + n_out)), dtype=torch.float32)
    for _ in range(max(1, int(epochs))):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), batch_size):
            b = perm[i:i + batch_size]
            if pairs and len(b) == 1 < len(xt):
                continue
            opt.zero_grad()
            out = model(xt[b])
            loss = loss_fn(out if adjust is None else out + adjust, yt[b])
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        out = model(xt)
        return {"train-loss": float(loss_fn(out, yt)),
                "train-acc": float((out.argmax(1) == yt).float().mean())}


def needs_pairs(model: nn.Module) -> bool:
    """BatchNorm cannot train on a batch of one example: such a last batch is skipped."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    out = model(torch.from_numpy(np.asarray(x, np.float32)))
    return float((out.argmax(1).numpy() == y).mean())


def record_bytes(content) -> int:
    """Bytes of the arrays in a Flower ``RecordDict`` (what a message carries over the wire)."""
    return int(sum(a.numpy().nbytes for rec in content.array_records.values() for a in rec.values()))
