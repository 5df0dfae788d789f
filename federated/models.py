"""Small models for federated experiments, and model <-> Flower record conversion.

Models are plain ``torch.nn`` modules described by a name (``mlp``, ``cnn``, or the user's
``pkg.mod:fn`` / ``path/file.py:fn``, see :mod:`edgekit.federated.usermodel`) and input/output
sizes, so the server and every client can build the same architecture from the run config alone.
Only floating-point state entries are aggregated; integer buffers are kept from the core
(:func:`edgekit.federated.state.merge_fixed`).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgekit.core.errors import UsageError, first_line

from . import usermodel
from .data import load_dataset
from .state import State


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
    return usermodel.build(usermodel.model_ref(name), in_dim, n_classes)  # UsageError for unknown names


def get_state(model: nn.Module) -> State:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def set_state(model: nn.Module, state: State) -> nn.Module:
    model.load_state_dict({k: torch.from_numpy(np.asarray(v).copy()) for k, v in state.items()})
    return model


def parameter_names(model: nn.Module) -> list[str]:
    """The trainable parameters' state_dict names (not running statistics or counters)."""
    return [k for k, _ in model.named_parameters()]


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


def check(ref: str, x, n_classes: int, seed: int = 0) -> None:
    """Build the model and run it on a few real examples ``x`` (N, in_dim) before anything starts:
    finite float (N, n_classes) logits, a loss that trains its parameters, a state_dict of floating-point
    weights (integer buffers are kept from the core, other dtypes are refused)."""
    xs = torch.from_numpy(np.asarray(x[:usermodel.CHECK_EXAMPLES], np.float32))
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
    s = load_dataset(dataset, seed)
    check(model, s.val_x, s.n_classes, seed)
