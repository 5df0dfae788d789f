"""Is this graph a transformer? For choosing a quantization mode (NNCF's transformer mode, ONNX Runtime's
dynamic int8) from the graph itself, in both IRs, with the reason recorded.

A graph has attention iff it holds a fused attention op (OpenVINO ScaledDotProductAttention & co.;
ONNX Attention, MultiHeadAttention, ...) or a Softmax fed -- through element-wise and shape ops only
(scale, mask add, Where, Reshape, ...) -- by a product of two activations (MatMul/Einsum without a
constant operand: Q @ K^T). A Softmax after a MatMul with a constant weight is a classifier head, not
attention: "Softmax and MatMul anywhere" called such CNNs transformers and missed SDPA graphs.
"""
from __future__ import annotations

from typing import Any

OV_ATTENTION = {"ScaledDotProductAttention", "PagedAttentionExtension", "MultiHeadAttention",
                "ScaledDotProductAttentionWithKVCache", "SDPA"}
OV_PASS = {"Add", "Multiply", "Divide", "Subtract", "Select", "Convert", "Reshape", "Transpose", "Squeeze",
           "Unsqueeze", "Maximum", "Minimum", "Clamp", "Sqrt", "Power", "FakeQuantize", "Concat", "Broadcast",
           "Tanh"}
ONNX_ATTENTION = {"Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention",
                  "PackedMultiHeadAttention", "DecoderMaskedMultiHeadAttention", "DecoderAttention",
                  "LongformerAttention", "SparseAttention", "PagedAttention"}
ONNX_PASS = {"Add", "Mul", "Div", "Sub", "Where", "Cast", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Max",
             "Min", "Clip", "Sqrt", "Pow", "Expand", "Concat", "QuantizeLinear", "DequantizeLinear", "Identity",
             "Tanh", "IsNaN"}
ONNX_MATMUL = ("MatMul", "Einsum", "MatMulInteger", "QLinearMatMul")
NO_ATTENTION = "no attention op, no Softmax over an activation x activation MatMul"
SEARCH = 32  # producers walked back from a Softmax


def _walk_softmax(start: Any, producers, is_matmul, operands, is_const, passes) -> bool:
    frontier, seen = [start], 0
    while frontier and seen < SEARCH:
        node = producers(frontier.pop())
        seen += 1
        if node is None:
            continue
        if is_matmul(node):
            if not any(is_const(x) for x in operands(node)):
                return True
            continue
        if passes(node):
            frontier += [x for x in operands(node) if not is_const(x)]
    return False


def ov_attention(model: Any) -> tuple[bool, str]:
    """(has attention, why) for an ``openvino.Model``."""
    types = {op.get_type_name() for op in model.get_ops()}
    if types & OV_ATTENTION:
        return True, f"fused attention op {sorted(types & OV_ATTENTION)}"
    memo: dict[str, bool] = {}

    def is_const(out: Any, depth: int = 0) -> bool:
        node = out.get_node()
        key = node.get_friendly_name()
        if key not in memo:
            t = node.get_type_name()
            memo[key] = t == "Constant" or (
                t not in ("Parameter", "ReadValue") and depth <= 12 and node.get_input_size() > 0
                and all(is_const(node.input_value(i), depth + 1) for i in range(node.get_input_size())))
        return memo[key]

    def inputs(node: Any) -> list:
        return [node.input_value(i) for i in range(node.get_input_size())]

    for op in model.get_ordered_ops():
        if op.get_type_name() == "Softmax" and _walk_softmax(
                op.input_value(0), lambda out: out.get_node(), lambda n: n.get_type_name() in ("MatMul", "Einsum"),
                inputs, is_const, lambda n: n.get_type_name() in OV_PASS):
            return True, f"Softmax {op.get_friendly_name()} fed by an activation x activation MatMul"
    return False, NO_ATTENTION


def onnx_attention(model: Any) -> tuple[bool, str]:
    """(has attention, why) for an ``onnx.ModelProto``."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    consts = {i.name for i in g.initializer}
    types = {n.op_type for n in g.node}
    if types & ONNX_ATTENTION:
        return True, f"fused attention op {sorted(types & ONNX_ATTENTION)}"
    memo: dict[str, bool] = {}

    def is_const(name: str, depth: int = 0) -> bool:
        if name not in memo:
            n = producer.get(name)
            memo[name] = name in consts or name == "" or (
                n is not None and depth <= 12 and (n.op_type in ("Constant", "ConstantOfShape") or (
                    len(n.input) > 0 and all(is_const(i, depth + 1) for i in n.input))))
        return memo[name]

    def operands(n: Any) -> list[str]:  # of a MatMul: the two factors (not zero points or scales)
        if n.op_type == "QLinearMatMul":
            return [n.input[0], n.input[3]]
        if n.op_type in ("MatMul", "MatMulInteger"):
            return [n.input[0], n.input[1]]
        return [i for i in n.input if i]

    for n in g.node:
        if n.op_type == "Softmax" and _walk_softmax(
                n.input[0], producer.get, lambda p: p.op_type in ONNX_MATMUL, operands, is_const,
                lambda p: p.op_type in ONNX_PASS):
            return True, f"Softmax {n.name} fed by an activation x activation MatMul"
    return False, NO_ATTENTION
