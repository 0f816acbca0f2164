"""ONNX file clean-up: debug metadata, short tensor ids, module scopes, float layers kept float.

Edits of finished or half-finished `.onnx` files shared by the ONNX exporter and the ONNX Runtime
int8 writer (`export.formats.onnx.int8`).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

DEBUG_METADATA_PREFIXES = ("pkg.torch.onnx.", "namespace")
SCOPES_KEY = "pkg.torch.onnx.name_scopes"
"""The dynamo exporter's per-node module path (`['', '0', 'conv1d']`): which module made the node."""


def strip_debug_metadata(model: Any, keep: tuple[str, ...] = ()) -> int:
    """Drop the exporter's per-node debug metadata (an `onnx_ir.Model` or an `onnx.ModelProto`).

    torch.onnx's dynamo exporter annotates every node with its FX node, module path, class
    hierarchy and Python stack trace (file paths of the machine that exported it): 19-29 % of the
    quickstart's .onnx bytes, read by no runtime, and not something to ship. `keep`: keys left in
    place (the quantizer's source file keeps `SCOPES_KEY` until the int8 file is made). Returns bytes
    dropped.
    """

    def dropped_key(key: str) -> bool:
        return key.startswith(DEBUG_METADATA_PREFIXES) and key not in keep

    dropped = 0
    if hasattr(model, "graph") and hasattr(model.graph, "all_nodes"):  # onnx_ir
        graphs = list(model.graphs()) + [f for f in model.functions.values()]
        for graph in graphs:
            for node in graph:
                for key in [k for k in node.metadata_props if dropped_key(k)]:
                    dropped += len(key) + len(node.metadata_props.pop(key))
        return dropped
    for graph in [model.graph, *[f for f in model.functions]]:
        for node in graph.node:
            keep_props = [p for p in node.metadata_props if not dropped_key(p.key)]
            dropped += sum(len(p.key) + len(p.value) for p in node.metadata_props) - sum(
                len(p.key) + len(p.value) for p in keep_props)
            del node.metadata_props[:]
            node.metadata_props.extend(keep_props)
    return dropped


def compact_names(proto: Any) -> int:
    """Rename the tensors of an `onnx.ModelProto` to short ids, in place; returns bytes saved.

    ONNX Runtime's quantizer names every tensor it adds after its source and its role
    (`stages.2.1.transformer.0.attn.qkv_proj.conv.weight_DequantizeLinear_Output`): on the
    quickstart student these strings are 16 % of the int8 file, on MobileViTv2-050 9 %. Names are
    identifiers only, so the graph's inputs and outputs and the weight initializers (rank >= 2,
    the parameter names a reader maps back to the model) keep theirs; every other tensor becomes
    a hex id, node names are cleared. Graphs with subgraphs (If/Loop/Scan) are left as they are.
    """
    import onnx

    graph = proto.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node
           for a in n.attribute):
        return 0
    before = proto.ByteSize()
    keep = {v.name for v in graph.input} | {v.name for v in graph.output} | {""}
    keep |= {t.name for t in graph.initializer if len(t.dims) >= 2}
    mapping: dict[str, str] = {}

    ids = (format(i, "x") for i in itertools.count())

    def short(name: str) -> str:
        if name in keep:
            return name
        if name not in mapping:
            mapping[name] = next(i for i in ids if i not in keep)
        return mapping[name]

    for tensor in graph.initializer:
        tensor.name = short(tensor.name)
    for node in graph.node:
        node.name = ""
        node.input[:] = [short(s) for s in node.input]
        node.output[:] = [short(s) for s in node.output]
    for info in graph.value_info:
        info.name = short(info.name)
    for annotation in graph.quantization_annotation:
        annotation.tensor_name = short(annotation.tensor_name)
    return before - proto.ByteSize()


def compact_file(path: Path, out: Path | None = None) -> int:
    """`compact_names` on an .onnx file with inlined weights, written to `out` (default: in place).

    Only on finished files: ORT's quantization tools, given a graph of short ids, made a model ORT
    could not load (MobileViTv2-050: a Conv fed a tensor of the wrong rank), so the fp32 file is
    compacted after the int8 file was made from it. The module scopes kept for the quantizer go too.
    """
    import onnx

    proto = onnx.load(str(path))
    saved = strip_debug_metadata(proto) + compact_names(proto)
    onnx.save(proto, str(out or path))
    return saved


REQUANTIZED_AT_LOAD = ("Conv", "ConvTranspose", "Gemm")
"""Ops ONNX Runtime's `WeightBiasQuantization` (a level-1 session optimisation, 1.21+) quantizes itself."""


def shield_float_layers(path: Path) -> int:
    """Keep float the Conv/Gemm layers the quantizer left float; returns how many were shielded.

    A float layer between int8 ones reads a scalar `DequantizeLinear` and feeds a `QuantizeLinear`
    (through a Relu that `ReluQuantFusion` removes). ONNX Runtime's `WeightBiasQuantization`
    optimiser takes that pattern for a QDQ node unit whose weight was forgotten and quantizes the
    weight at session load, per tensor: `nodes_to_exclude` is then undone on every runtime.
    Measured on the floor's 2-block MLP test model with its two ruinous layers float: decision
    agreement with fp32 0.858 unshielded, 0.994 shielded (ExecuTorch's file: 0.994). It skips a
    layer whose input scale is not a scalar, so the layer gets its own `DequantizeLinear` with the
    same scale and zero point repeated per channel (`axis=1`): the same values, computed in float.
    Not done for S8S8 files (`onnx_activations: int8`): TensorRT takes per-tensor activation scales only.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    shielded = 0
    for node in [n for n in graph.node if n.op_type in REQUANTIZED_AT_LOAD]:
        dq = producer.get(node.input[0])
        weight = inits.get(node.input[1]) if len(node.input) > 1 else None
        if dq is None or dq.op_type != "DequantizeLinear" or weight is None or dq.input[1] not in inits:
            continue  # its input is float, or its weight is quantized (a DequantizeLinear, not an initializer)
        scale = numpy_helper.to_array(inits[dq.input[1]])
        channels = _input_channels(node, weight)
        if scale.size != 1 or channels is None or channels < 2:
            continue
        name = f"{node.name or node.output[0]}_float_in"
        graph.initializer.append(numpy_helper.from_array(np.full(channels, scale.item(), scale.dtype), name + "_scale"))
        inputs = [dq.input[0], name + "_scale"]
        if len(dq.input) > 2 and dq.input[2] in inits:
            zp = numpy_helper.to_array(inits[dq.input[2]])
            graph.initializer.append(numpy_helper.from_array(np.full(channels, zp.item(), zp.dtype), name + "_zp"))
            inputs.append(name + "_zp")
        graph.node.insert(list(graph.node).index(node), helper.make_node(
            "DequantizeLinear", inputs, [name], name=name, axis=1))
        node.input[0] = name
        shielded += 1
    if shielded:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        for orphan in [n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] not in used]:
            graph.node.remove(orphan)
        onnx.save(model, str(path))
    return shielded


def _input_channels(node: Any, weight: Any) -> int | None:
    """Size of axis 1 of a Conv/ConvTranspose/Gemm's first input, read from its weight's shape."""
    attrs = {a.name: a.i for a in node.attribute if a.type == a.INT}
    dims = list(weight.dims)
    if node.op_type == "Gemm":
        if attrs.get("transA", 0) or len(dims) != 2:
            return None  # A transposed: axis 1 is the batch
        return dims[1] if attrs.get("transB", 0) else dims[0]
    if node.op_type == "Conv":
        return dims[1] * attrs.get("group", 1) if len(dims) > 1 else None
    return dims[0] if dims else None  # ConvTranspose: weight (C_in, C_out / group, ...)


def nodes_of_modules(path: Path, modules: tuple[str, ...] | list[str]) -> list[str]:
    """Names of the ONNX nodes of `modules` (a block covers its children).

    A node belongs to a module when the exporter's scope of it (`SCOPES_KEY`, kept by
    `export_fp32_onnx` and `pre_process`) names the module, or when it reads a weight under the
    module's name (the dynamo exporter keeps `features.3.conv.weight` on its initializer; this
    covers nodes ORT's optimiser made anew, e.g. a Conv with its BatchNorm folded in). Weights
    alone are not enough: the log-mel front end's power sum and `+ eps` read no weight, and with
    only its Conv and MatMul excluded ORT quantized the power spectrum in between (measured: a
    MobileNetV3-Small wake-word student at F1 0.31 instead of 0.87). Nodes without a name are
    named here (ORT's `nodes_to_exclude` matches names); the file is rewritten only then.
    """
    if not modules:
        return []
    import ast

    import onnx

    proto = onnx.load(str(path))
    graph = proto.graph
    prefixes = tuple(f"{m}." for m in modules)
    owned = {t.name for t in graph.initializer if t.name.startswith(prefixes)}

    def in_scope(node: Any) -> bool:
        for p in node.metadata_props:
            if p.key == SCOPES_KEY:
                scopes = ast.literal_eval(p.value)
                return any(s in modules or s.startswith(prefixes) for s in scopes[:-1])
        return False

    renamed, names = False, []
    for i, node in enumerate(graph.node):
        if not (any(name in owned for name in node.input) or in_scope(node)):
            continue
        if not node.name:
            node.name, renamed = f"kdtool_float_{i}", True
        names.append(node.name)
    if renamed:
        onnx.save(proto, str(path))
    return names
