"""Flower ClientApp: train the received clone on this node's private partition, send it back.

Message in  (type "train"): RecordDict{"arrays": ArrayRecord (the core model clone),
                                       "config": ConfigRecord(version, model, dataset, alpha,
                                                              seed, lr, epochs, batch-size,
                                                              logit-adjust, in-dim, n-classes, classes)}
Message out: RecordDict{"arrays": ArrayRecord (the trained clone),
                        "metrics": MetricRecord(num-examples, base-version, train-loss,
                                                train-acc)}
Only the model and these metrics leave the node; the data never does.

Node config (``flower-supernode --node-config``): partition-id, num-partitions, optional
data-path (an .npz with x, y replacing the partition; checked against the in-dim / n-classes /
classes the server sends, so such a node needs no copy of the data set) and, for robustness
experiments only, attack = label-flip | random-weights | scaled (a deliberately malicious client).

``model`` is mlp | cnn or the user's ``pkg.mod:fn`` / ``/abs/path/file.py:fn`` (usermodel.py): the
node imports it, so the module or file must be there too. The virtual-clock simulation calls
:func:`train_clone` directly.
A node whose data is empty or malformed, or that cannot build the model (import failure), replies
with a Flower ``Error`` naming the reason (and logs it), so the server can skip it without crashing.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch
from flwr.app import Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from edgekit.core.errors import DataError, EdgekitError

from .data import load_dataset, load_node_file, load_partition
from .models import build_model, get_state, set_state, train_local
from .state import record_to_state, state_to_record

log = logging.getLogger("edgekit.federated")

ATTACKS = ("label-flip", "random-weights", "scaled")
ERR_DATA = 1001  # Error.code for unusable local data
ERR_CONFIG = 1002  # Error.code for an unusable instruction

app = ClientApp()


def _cfg(msg: Message) -> dict:
    cfg = msg.content.config_records.get("config")
    return dict(cfg) if cfg is not None else {}


def train_clone(msg: Message, context: Context) -> Message:
    """The whole client step (also called directly by the virtual-clock simulation)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    node = context.node_config
    cfg = _cfg(msg)
    try:
        if "arrays" not in msg.content.array_records:
            raise EdgekitError("instruction carries no 'arrays' record")
        dataset, seed = str(cfg.get("dataset", "digits")), int(cfg.get("seed", 0))
        if node.get("data-path") and "in-dim" in cfg and "n-classes" in cfg:
            # the node's own file, checked against the shape the server sent: no copy of the data set here
            in_dim, n_classes = int(cfg["in-dim"]), int(cfg["n-classes"])
            x, y = load_node_file(str(node["data-path"]), in_dim, n_classes, tuple(cfg.get("classes", ())))
        else:
            x, y = load_partition(dataset, int(node.get("partition-id", -1)),
                                  int(node.get("num-partitions", 0)), float(cfg.get("alpha", 0.5)),
                                  seed, data_path=str(node["data-path"]) if node.get("data-path") else None)
            s = load_dataset(dataset, seed)
            in_dim, n_classes = s.in_dim, s.n_classes
        model = build_model(str(cfg.get("model", "mlp")), in_dim, n_classes)
        base = record_to_state(msg.content.array_records["arrays"])
        set_state(model, base)
    except (EdgekitError, KeyError, ValueError, RuntimeError) as err:
        code = ERR_DATA if isinstance(err, DataError) else ERR_CONFIG
        log.warning("node %s: rejecting instruction: %s", context.node_id, err)
        return Message(Error(code=code, reason=f"client rejected: {err}"), reply_to=msg)

    attack = str(node.get("attack", "") or "")
    version = int(cfg.get("version", 0))
    # modulo 2**63: torch seeds are 64-bit (unchanged for every seed below ~9e13)
    # ``repeat``: this node's earlier clones of the same version (0: the first; the seed is then
    # the same as without it, so FedAvg, which sends each round once, is unchanged)
    train_seed = (seed * 100_003 + version * 101 + int(node.get("partition-id", 0))
                  + int(cfg.get("repeat", 0)) * 1_000_003) % 2**63
    if attack == "label-flip":
        y = (n_classes - 1 - y).astype(np.int64)
    metrics = train_local(model, x, y, epochs=int(cfg.get("epochs", 1)), lr=float(cfg.get("lr", 0.05)),
                          batch_size=int(cfg.get("batch-size", 32)), seed=train_seed,
                          logit_adjust=float(cfg.get("logit-adjust", 0.0)))
    state = get_state(model)
    if attack == "random-weights":
        rng = np.random.default_rng(train_seed)
        state = {k: rng.normal(0, 1, v.shape).astype(v.dtype) for k, v in state.items()}
    elif attack == "scaled":  # reversed and boosted update: base - 10 * (trained - base)
        state = {k: (base[k] - 10.0 * (v - base[k])).astype(v.dtype) for k, v in state.items()}
    content = RecordDict({
        "arrays": state_to_record(state),
        "metrics": MetricRecord({"num-examples": int(len(x)), "base-version": version,
                                 "partition-id": int(node.get("partition-id", -1)),
                                 "train-loss": metrics["train-loss"], "train-acc": metrics["train-acc"]}),
    })
    return Message(content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return train_clone(msg, context)
