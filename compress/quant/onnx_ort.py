"""ONNX Runtime quantization: `quantize_dynamic`; `quant_pre_process` + `quantize_static` (QDQ, per-channel).

The fp32 student is exported once (`torch.onnx.export(dynamo=True)`, weights inlined, dynamic batch)
to `model.fp32.onnx` beside the int8 file, so sizes compare like with like: both finished files get
short tensor ids (`compact_names`), the exporter's debug metadata is stripped from both.
"""

from __future__ import annotations

import copy
import itertools
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.core.atomic import atomic_path, size_on_disk_mb
from compress.core.errors import ExportError, KdtoolError
from compress.core.onnxrt import ort_session
from compress.quant.common import finish_meta, input_batches, kept_float_modules, provenance, require_quantized
from compress.quant.configs import Int8DynamicConfig, Int8StaticConfig, QuantConfig, QuantInputs, QuantizedModel

INPUT_NAME = "input"


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


def export_fp32_onnx(model: nn.Module, example: torch.Tensor, out: Path) -> Path:
    """Export the fp32 model to `out/model.fp32.onnx` (weights inlined, dynamic batch) atomically.

    Each node keeps its module scope (`SCOPES_KEY`) so `nodes_of_modules` finds every node of a
    module kept in float; `compact_file` drops it from the finished files.
    """
    path = Path(out) / "model.fp32.onnx"
    with atomic_path(path) as tmp:
        try:
            program = torch.onnx.export(copy.deepcopy(model).eval(), (example,), dynamo=True,
                                        input_names=[INPUT_NAME], output_names=["output"], verbose=False,
                                        dynamic_shapes=({0: torch.export.Dim.AUTO},))
            strip_debug_metadata(program.model, keep=(SCOPES_KEY,))
            program.save(str(tmp), external_data=False)
        except Exception as e:  # torch.onnx wraps many error types
            raise ExportError(f"quantize (onnx): torch.onnx.export failed ({type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''})",
                              "use backend executorch or torch, or fix the unsupported op") from e
    return path


def int8_census_onnx(path: Path) -> dict[str, Any]:
    """Count int8/uint8 initializers of rank >= 2 and the share of weight elements they hold."""
    import numpy as np
    import onnx

    model = onnx.load(str(path))
    int8_types = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    int8_tensors = int8_elems = float_elems = 0
    for init in model.graph.initializer:
        if len(init.dims) < 2:
            continue
        n = int(np.prod(init.dims))
        if init.data_type in int8_types:
            int8_tensors, int8_elems = int8_tensors + 1, int8_elems + n
        elif init.data_type in float_types:
            float_elems += n
    total = int8_elems + float_elems
    return {"int8_tensors": int8_tensors, "int8_weight_elements": int8_elems,
            "float_weight_elements": float_elems,
            "quantized_share": round(int8_elems / total, 4) if total else 0.0}


def _need_out(qi: QuantInputs, mode: str) -> Path:
    if qi.out is None:
        raise KdtoolError(f"quantize {mode} (onnx): no output folder given",
                          "pass out=<folder> for file backends")
    return Path(qi.out)


def _finish(config: QuantConfig, qi: QuantInputs, fp32: Path, int8: Path, calibrated: int | None, notes: list[str],
            activations: str) -> QuantizedModel:
    census = int8_census_onnx(int8)
    require_quantized(census, config.mode, "onnx", "backend executorch (PT2E)")
    ort_session(int8)  # fail here, not at benchmark time, if ORT cannot load what it wrote
    with atomic_path(fp32) as tmp:  # short ids like the int8 file: the size ratio compares like with like
        compact_file(fp32, tmp)
    meta = provenance(config, qi.seed, calibrated, ("onnx", "onnxruntime"), notes,
                      weights="int8 symmetric per-channel", activations=activations, int8=census,
                      fp32_file=fp32.name)
    qm = QuantizedModel(config.mode, "onnx", path=int8, meta=meta)
    finish_meta(qm, size_on_disk_mb(int8), size_on_disk_mb(fp32))
    return qm


def ort_dynamic(model: nn.Module, config: Int8DynamicConfig, qi: QuantInputs) -> QuantizedModel:
    """`onnxruntime.quantization.quantize_dynamic` (int8 per-channel weights; MatMul/Gemm and Conv).

    Modules that declare `keep_float_in_int8` stay float here too: dynamic int8 of the log-mel
    front end's DFT Conv and mel MatMul would quantize the waveform and the power spectrum.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = _need_out(qi, "dynamic")
    fp32 = export_fp32_onnx(model, qi.example, out)
    int8 = out / "model.int8.onnx"
    kept = kept_float_modules(model)
    notes = [f"kept in float: {', '.join(kept)}"] if kept else []
    with atomic_path(int8) as tmp:
        quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                         nodes_to_exclude=nodes_of_modules(fp32, kept))
        compact_file(tmp)
    return _finish(config, qi, fp32, int8, None, notes, "uint8 dynamic (ConvInteger/MatMulInteger)")


class _Reader:
    """ORT CalibrationDataReader over preprocessed batches (mixed in lazily: ORT imports stay local)."""

    def __init__(self, batches) -> None:
        self.batches = iter(batches)
        self.samples = 0

    def get_next(self) -> dict | None:
        x = next(self.batches, None)
        if x is None:
            return None
        self.samples += len(x)
        return {INPUT_NAME: x.detach().float().cpu().numpy()}


def ort_static(model: nn.Module, config: Int8StaticConfig, qi: QuantInputs) -> QuantizedModel:
    """`quant_pre_process` + `quantize_static`: QDQ format, per-channel int8 weights, calibrated activations.

    Activations are uint8 with 7-bit weights (U8S8, the default) or int8 (S8S8): see
    `Int8StaticConfig.onnx_activations` for why and what was measured.

    Biases stay float32 (`QuantizeBias: False`). Quantized, each bias became an int32 tensor plus a
    float32 per-channel scale, twice its float bytes (92 kB more on a trained MobileViTv2-050), and
    bought nothing: ONNX Runtime fuses the same QLinearConv nodes either way (it quantizes the
    bias itself at load; measured: same fused graph, same latency). PT2E's XNNPACK config keeps
    biases float too.
    """
    if qi.calibration is None:
        raise KdtoolError("quantize static (onnx): no calibration data given",
                          "pass calibration=<training loader>")
    out = _need_out(qi, "static")
    fp32 = export_fp32_onnx(model, qi.example, out)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(dir=out, prefix=".prep.") as scratch:
        source = pre_process(fp32, Path(scratch), notes)
        int8 = out / "model.int8.onnx"
        if config.float_modules:
            notes.append(f"kept in float: {', '.join(config.float_modules)}")
        with atomic_path(int8) as tmp:
            samples = ort_quantize_file(source, tmp, config,
                                        input_batches(qi.calibration, qi.preprocess, config.calibration_samples))
            compact_file(tmp)
    if samples < config.calibration_samples:
        notes.append(f"only {samples} calibration samples (asked {config.calibration_samples})")
    activations = ("uint8 asymmetric static (QDQ, U8S8; weights 7-bit)" if config.onnx_activations == "uint8"
                   else "int8 symmetric static (QDQ, S8S8)")
    return _finish(config, qi, fp32, int8, samples, notes, activations)


def pre_process(fp32: Path, scratch: Path, notes: list[str]) -> Path:
    """`quant_pre_process` (shape inference, graph optimisation) into `scratch`; the raw export if it fails.

    ORT's optimiser drops node metadata but keeps the names of the nodes it does not rewrite, so the
    module scopes of the raw export are copied back onto those nodes by name.
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prep = scratch / "model.prep.onnx"
    try:
        quant_pre_process(str(fp32), str(prep))
    except Exception as e:  # symbolic shape inference fails on some graphs; quantizing still works
        notes.append(f"quant_pre_process skipped ({type(e).__name__}); quantized the raw export")
        return fp32
    scopes = {n.name: p.value for n in onnx.load(str(fp32), load_external_data=False).graph.node
              for p in n.metadata_props if p.key == SCOPES_KEY and n.name}
    if scopes:
        proto = onnx.load(str(prep))
        for node in proto.graph.node:
            if node.name in scopes and not any(p.key == SCOPES_KEY for p in node.metadata_props):
                node.metadata_props.add(key=SCOPES_KEY, value=scopes[node.name])
        onnx.save(proto, str(prep))
    return prep


def ort_quantize_file(source: Path, dest: Path, config: Int8StaticConfig, batches,
                      only_modules: tuple[str, ...] = ()) -> int:
    """`quantize_static` of `source` into `dest` (QDQ), `config.float_modules` left float; samples used.

    `only_modules`: quantize the nodes of these modules alone (`nodes_to_quantize`).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    only = nodes_of_modules(source, only_modules)
    if only_modules and not only:  # none of these modules has an ONNX node: nothing to quantize
        Path(dest).write_bytes(Path(source).read_bytes())
        return 0
    reader = type("CalibrationReader", (_Reader, CalibrationDataReader), {})(batches)
    unsigned = config.onnx_activations == "uint8"
    quantize_static(str(source), str(dest), reader, quant_format=QuantFormat.QDQ,
                    per_channel=config.per_channel,
                    activation_type=QuantType.QUInt8 if unsigned else QuantType.QInt8,
                    weight_type=QuantType.QInt8, reduce_range=unsigned,
                    calibrate_method=_ort_calibration(config.calibration_method),
                    nodes_to_exclude=nodes_of_modules(source, config.float_modules),
                    nodes_to_quantize=only or None,
                    # int8 activations symmetric (zero point 0): TensorRT's Q/DQ import takes no other
                    extra_options={"QuantizeBias": False, "ActivationSymmetric": not unsigned})
    if unsigned:
        shield_float_layers(dest)
    return reader.samples


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


def _ort_calibration(method: str | None):
    """ONNX Runtime's calibration method for `Int8StaticConfig.calibration_method` (None: min-max)."""
    from onnxruntime.quantization import CalibrationMethod

    return CalibrationMethod.Percentile if method == "histogram" else CalibrationMethod.MinMax


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
