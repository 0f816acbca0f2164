"""How much of a quantized graph is really int8: share of compute ops fed by quantized tensors, int8 weights.

Written by hand because neither torchao nor ONNX Runtime reports it. A compute op counts as
quantized when every tensor input comes from a dequantize node (the QDQ pattern both PT2E and
ONNX Runtime emit, which backends fuse into int8 kernels) or when it is an integer op itself
(ONNX `QLinearConv`, `MatMulInteger`, ...). Shape-only ops count like any other op, so the share
is a lower bound on the int8 compute fraction, not a FLOP fraction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

_PT2E_QDQ = ("quantize_per_tensor", "quantize_per_channel", "dequantize_per_tensor", "dequantize_per_channel",
             "choose_qparams")
_ONNX_QDQ = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
_ONNX_WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
_ONNX_INT_OPS = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QLinearAdd", "QLinearMul",
                 "QLinearSigmoid", "QLinearGlobalAveragePool", "QLinearConcat", "QGemm", "QLinearAveragePool"}
_INT8 = {torch.int8, torch.uint8}


def pt2e_quantized_share(graph_module: torch.fx.GraphModule) -> dict[str, Any]:
    """Quantized-op share and int8 weight share of a PT2E-converted graph (`convert_pt2e` output)."""
    def is_qdq(node: torch.fx.Node) -> bool:
        return node.op == "call_function" and any(k in str(node.target) for k in _PT2E_QDQ)

    compute = quantized = 0
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or is_qdq(node) or "getitem" in str(node.target):
            continue
        compute += 1
        inputs = [a for a in node.all_input_nodes if a.op != "get_attr"]
        if inputs and all(is_qdq(a) and "dequantize" in str(a.target) for a in inputs):
            quantized += 1
    int8_elems = float_elems = 0
    for tensor in _graph_constants(graph_module):
        if tensor.dtype in _INT8:
            int8_elems += tensor.numel()
        elif tensor.is_floating_point():
            float_elems += tensor.numel()
    return _summary(quantized, compute, int8_elems, float_elems)


def onnx_quantized_share(path: Path) -> dict[str, Any]:
    """Quantized-op share and int8 initializer share of an ONNX model (QDQ or QOperator format)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    producer = {out: n.op_type for n in proto.graph.node for out in n.output}
    float_weights = {t.name for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    compute = quantized = 0
    for node in proto.graph.node:
        if node.op_type in _ONNX_QDQ:
            continue
        compute += 1
        inputs = [i for i in node.input if i and i in producer]
        # a layer kept float reads a DequantizeLinear too (`shield_float_layers`); its weight is float
        float_weight = node.op_type in _ONNX_WEIGHTED and len(node.input) > 1 and node.input[1] in float_weights
        fed_by_dq = bool(inputs) and all(producer[i] == "DequantizeLinear" for i in inputs) and not float_weight
        if node.op_type in _ONNX_INT_OPS or fed_by_dq:
            quantized += 1
    int8_elems = float_elems = 0
    for init in proto.graph.initializer:
        n = 1
        for d in init.dims:
            n *= d
        if init.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
            int8_elems += n
        elif init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            float_elems += n
    return _summary(quantized, compute, int8_elems, float_elems)


def _graph_constants(graph_module: torch.fx.GraphModule) -> list[torch.Tensor]:
    out = []
    for node in graph_module.graph.nodes:
        if node.op == "get_attr":
            value = graph_module
            for part in str(node.target).split("."):
                value = getattr(value, part, None)
            if isinstance(value, torch.Tensor):
                out.append(value)
    return out


def _summary(quantized: int, compute: int, int8_elems: int, float_elems: int) -> dict[str, Any]:
    weights = int8_elems + float_elems
    return {"quantized_ops": quantized, "compute_ops": compute,
            "op_share": round(quantized / compute, 4) if compute else 0.0,
            "int8_weight_share": round(int8_elems / weights, 4) if weights else 0.0}
