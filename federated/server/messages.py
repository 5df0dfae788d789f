"""What the server sends to a node and what it takes back.

Out: a ``train`` instruction, RecordDict{"arrays": the core's ArrayRecord, "config": ConfigRecord}.
In: the reply, RecordDict{"arrays": the trained clone, "metrics": MetricRecord(num-examples,
base-version[, partition-id, train-loss, train-acc])}.

A node is not trusted: :func:`read_reply` checks every field of a reply -- its sender, the
presence and type of each record, every metric's type, finiteness and range, every array's key,
shape, dtype, finiteness and size (state.MagnitudeCheck) -- before anything of it touches the
server's state, and names the first problem (raised as ``Rejected``: the reply is dropped and the
reason logged; the run goes on). Unknown metrics are ignored, never stored.
"""
from __future__ import annotations

import math
from numbers import Integral, Real

from ..state import MagnitudeCheck, State, record_to_state, shape_mismatch
from ..strategies.base import Rejected, Update

EXAMPLES_MAX = 2**53  # a claimed example count must be exact as a float
PARTITION_MAX = 2**31
# optional metrics: (what is allowed, predicate); all must be finite numbers
OPTIONAL = {"partition-id": ("an integer in [-1, 2**31)", lambda v: _is_int(v) and -1 <= v < PARTITION_MAX),
            "train-loss": ("a finite number >= 0", lambda v: _is_num(v) and 0 <= v < math.inf),
            "train-acc": ("a number in [0, 1]", lambda v: _is_num(v) and 0 <= v <= 1)}


def _is_int(v) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)


def _metrics(m) -> dict:
    """The reply's metrics, checked; raises Rejected naming the first bad one."""
    n = m.get("num-examples", 0)
    if not _is_int(n):
        raise Rejected(f"num-examples {n!r} is not an integer")
    if n <= 0:
        raise Rejected("reply reports no training examples")
    if n > EXAMPLES_MAX:
        raise Rejected(f"num-examples {n} is out of range (at most 2**53)")
    out = {"num-examples": float(n)}
    if "base-version" not in m:
        raise Rejected("reply has no base-version")
    if not _is_int(m["base-version"]):
        raise Rejected(f"base-version {m['base-version']!r} is not an integer")
    out["base-version"] = float(m["base-version"])
    for k, (want, ok) in OPTIONAL.items():
        if k in m:
            if not ok(m[k]):
                raise Rejected(f"{k} {m[k]!r} is not {want}")
            out[k] = float(m[k])
    return out


def read_reply(reply, *, node: int, version: int, reference: State, magnitude: MagnitudeCheck | None,
               arrived: float = 0.0) -> Update:
    """The Update in a reply to the instruction of ``version`` sent to ``node``; ``Rejected`` (the
    reason) if any field is unusable. ``reference`` is the core (keys, shapes, dtypes)."""
    try:
        src = reply.metadata.src_node_id
        c = reply.content
        has = "arrays" in c.array_records and "metrics" in c.metric_records
    except Exception as err:  # noqa: BLE001 - a malformed message of any kind is one bad reply
        raise Rejected(f"reply cannot be read: {type(err).__name__}: {err}") from None
    if src != node:
        raise Rejected(f"reply comes from node {src}, not from node {node} it was sent to")
    if not has:
        raise Rejected("reply lacks the 'arrays' or 'metrics' record")
    metrics = _metrics(c.metric_records["metrics"])
    base = int(metrics["base-version"])
    if base != version:
        raise Rejected(f"base version {base} does not match the dispatched version {version}")
    try:
        state = record_to_state(c.array_records["arrays"])
    except Exception as err:  # noqa: BLE001 - undecodable arrays
        raise Rejected(f"arrays cannot be decoded: {type(err).__name__}: {err}") from None
    why = shape_mismatch(state, reference) or (magnitude.problem(state) if magnitude is not None else None)
    if why is not None:
        raise Rejected(why)
    return Update(node_id=node, base_version=version, num_examples=int(metrics["num-examples"]), state=state,
                  arrived=arrived, metrics=metrics)


def reply_problem(reply, *, version: int, reference: State, magnitude: MagnitudeCheck | None) -> str | None:
    """Why a reply cannot be used (None: it can); for Flower's FedAvg, which reads it itself."""
    try:
        read_reply(reply, node=reply.metadata.src_node_id, version=version, reference=reference,
                   magnitude=magnitude)
    except Rejected as err:
        return str(err)
    return None


def instruction(rec, config: dict, *, node: int, version: int, ttl: float):
    """A ``train`` message carrying the core (``rec``, an ArrayRecord) and ``config``."""
    from flwr.app import ConfigRecord, Message, RecordDict

    return Message(RecordDict({"arrays": rec, "config": ConfigRecord(config)}), dst_node_id=int(node),
                   message_type="train", ttl=ttl, group_id=str(version))
