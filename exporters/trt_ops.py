"""Which ONNX operators TensorRT's ONNX parser accepts, per TensorRT major version (data + a checker).

Sources (read 2026-11 through the docs index, not executed against TensorRT here):
* TensorRT 10: onnx-tensorrt ``docs/operators.md`` for TensorRT 10.15 — "supports operators in the
  inclusive range of opset 9 to opset 24"; rows marked ``Y`` below, rows marked ``N`` in
  ``KNOWN_UNSUPPORTED``.
* TensorRT 11: the 10.15 matrix plus the parser additions in the 11.x release notes (11.0: ``Swish``
  and the custom ops ``TRT_Attention``/``TRT_MoE``/``TRT_KVCacheUpdate``; 11.2.1: ``DFT`` through a
  cuFFT plugin); the ONNX opset guide for 11.x gives opset 9..25.

The check is conservative: an op in neither list is reported as "not in the support list", and
nodes in custom domains are reported unless TensorRT ships them. Per-op restrictions that depend on
runtime values (e.g. "K must be an initializer") are only checked where the graph shows them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_TRT10 = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool
BatchNormalization BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape
Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum
Elu Equal Erf Exp Expand EyeLike Flatten Floor GRU Gather GatherElements GatherND Gelu Gemm
GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
GroupNormalization HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If
ImageScaler InstanceNormalization IsInf IsNaN LRN LSTM LayerNormalization LeakyRelu Less
LessOrEqual Log LogSoftmax Loop LpNormalization LpPool MatMul Max MaxPool Mean
MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or PRelu Pad
ParametricSoftplus Pow QuantizeLinear RMSNormalization RNN RandomNormal RandomNormalLike
RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp
ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan Scatter ScatterElements
ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign
SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh TensorScatter ThresholdedRelu Tile TopK
Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

KNOWN_UNSUPPORTED = frozenset("""
AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Col2Im CenterCropPad
Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear ImageDecoder MatMulInteger
MaxRoiPool MaxUnpool MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional
OptionalGetElement OptionalHasElement QLinearConv QLinearMatMul RegexFullMatch SequenceAt
SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength SequenceMap
SoftmaxCrossEntropyLoss SplitToSequence StringConcat StringNormalizer StringSplit TfIdfVectorizer
Unique
""".split())

# Custom-domain ops the TensorRT ONNX parser maps itself (domain "trt" in the parser).
_TRT11_CUSTOM = frozenset({"TRT_Attention", "TRT_MoE", "TRT_KVCacheUpdate"})


@dataclass(frozen=True)
class TrtOpSupport:
    major: int
    opset_min: int
    opset_max: int
    ops: frozenset
    custom_ops: frozenset
    source: str

    def unsupported_reason(self, op_type: str, domain: str) -> str | None:
        if domain not in ("", "ai.onnx"):
            if op_type in self.custom_ops:
                return None
            return f"custom-domain op {domain}::{op_type} needs a TensorRT plugin"
        if op_type in self.ops:
            return None
        if op_type in KNOWN_UNSUPPORTED:
            return f"{op_type} is listed as unsupported by the TensorRT {self.major} ONNX parser"
        return f"{op_type} is not in the TensorRT {self.major} ONNX parser's support list"


TRT_SUPPORT: dict[int, TrtOpSupport] = {
    10: TrtOpSupport(10, 9, 24, _TRT10, frozenset(),
                     "onnx-tensorrt docs/operators.md (TensorRT 10.15)"),
    11: TrtOpSupport(11, 9, 25, _TRT10 | {"Swish", "DFT"}, _TRT11_CUSTOM,
                     "TensorRT 10.15 matrix + 11.0/11.2.1/11.5 parser release notes"),
}
DEFAULT_TRT_MAJOR = 10


def support_for(major: int) -> TrtOpSupport:
    from edgekit.core.errors import UsageError
    if major in TRT_SUPPORT:
        return TRT_SUPPORT[major]
    if major > max(TRT_SUPPORT):  # newer than our table: use the newest we know, flagged by the caller
        return TRT_SUPPORT[max(TRT_SUPPORT)]
    raise UsageError(f"TensorRT {major} is not supported by edgekit (known: {sorted(TRT_SUPPORT)})",
                     "use TensorRT 10 or 11 (--trt-version 10|11)")


def _attr(node: Any, name: str) -> Any:
    for a in node.attribute:
        if a.name == name:
            return a
    return None


def _restriction(node: Any, initializers: set[str]) -> str | None:
    """Per-op restrictions of the matrix that can be read off the graph."""
    op = node.op_type
    if op == "MaxPool" and len([o for o in node.output if o]) > 1:
        return "MaxPool's Indices output is unsupported by TensorRT"
    if op in ("AveragePool", "MaxPool", "LpPool"):
        d = _attr(node, "dilations")
        if d is not None and any(int(v) != 1 for v in d.ints):
            return f"{op} with dilations {list(d.ints)} is unsupported (must be all ones)"
    if op == "LayerNormalization" and len([o for o in node.output if o]) > 1:
        return "LayerNormalization: only the first output Y is supported"
    if op == "TopK":
        s = _attr(node, "sorted")
        if s is not None and int(s.i) == 0:
            return "TopK with sorted=0 is unsupported"
    if op == "ScatterND":
        r = _attr(node, "reduction")
        if r is not None and r.s not in (b"", b"none"):
            return f"ScatterND reduction={r.s.decode()} is unsupported"
    if op == "Resize":
        a = _attr(node, "antialias")
        if a is not None and int(a.i) != 0:
            return "Resize with antialias is unsupported"
    return None


def _walk(graph: Any, prefix: str = ""):
    for i, node in enumerate(graph.node):
        yield prefix, i, node
        for a in node.attribute:
            subs = ([a.g] if a.HasField("g") else []) + list(a.graphs)
            for sub in subs:
                if len(sub.node):
                    yield from _walk(sub, f"{prefix}{node.name or node.op_type}/{a.name}/")


def check_onnx_ops(model: Any, major: int = DEFAULT_TRT_MAJOR) -> dict:
    """Check an ONNX ModelProto against TensorRT ``major``'s parser.

    Returns ``{"trt_major", "source", "opset", "opset_ok", "unsupported": [{node, op_type, domain,
    reason}], "op_counts": {op: n}}``; ``unsupported`` names every offending node (nodes without a
    name get ``<op_type>_<index>``), including nodes inside If/Loop/Scan bodies.
    """
    sup = support_for(major)
    opset = None
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            opset = int(imp.version)
    initializers = {t.name for t in model.graph.initializer}
    bad, counts = [], {}
    for prefix, i, node in _walk(model.graph):
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
        reason = sup.unsupported_reason(node.op_type, node.domain)
        if reason is None:
            reason = _restriction(node, initializers)
        if reason:
            bad.append({"node": prefix + (node.name or f"{node.op_type}_{i}"), "op_type": node.op_type,
                        "domain": node.domain or "ai.onnx", "reason": reason})
    opset_ok = opset is None or sup.opset_min <= opset <= sup.opset_max
    return {"trt_major": sup.major, "source": sup.source, "opset": opset, "opset_ok": opset_ok,
            "opset_range": [sup.opset_min, sup.opset_max], "unsupported": bad,
            "op_counts": dict(sorted(counts.items()))}
