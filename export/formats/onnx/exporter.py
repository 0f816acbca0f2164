"""ONNX via `torch.onnx.export(..., dynamo=True)`: dynamic batch, metadata_props, checked and shape-inferred.

Weights are inlined when the model is under 2 GB (protobuf's limit); larger models keep the
external `.data` file, which is listed in `Artifact.files` and counted in the size. int8 adopts an
ONNX Runtime–quantized (QDQ) file made by the quantization stage (`spec.quantized_onnx`); fp16
converts the fp32 graph with ONNX Runtime's float16 tool, keeping fp32 inputs and outputs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.core.atomic import atomic_path
from compress.core.errors import ExportError
from compress.core.onnxrt import ort_session, session_options
from export.artifact import Artifact
from export.formats.onnx.clean import compact_file, compact_names, strip_debug_metadata
from export.registry import EXPORTERS, ExportContext, build_artifact, check_precision, first_line

PROTOBUF_LIMIT_BYTES = 2 * 1024**3 - 64 * 1024**2  # keep a margin under protobuf's 2 GiB for the graph itself


@EXPORTERS.register("onnx")
class OnnxExporter:
    """ONNX (torch.onnx dynamo exporter): ONNX Runtime on servers and ORT Mobile; TensorRT's input."""

    name = "onnx"
    runtime = "onnxruntime"
    precisions = ("fp32", "fp16", "int8")

    def export(self, model: nn.Module, example: torch.Tensor, out_dir: Path, spec: ExportContext) -> Artifact:
        """Write `<name>.<precision>.onnx` (plus `.data` for models over 2 GB) and check it with onnx."""
        check_precision(self, spec)
        path = Path(out_dir) / f"{spec.name}.{spec.precision}.onnx"
        if spec.precision == "int8":
            extra = adopt_quantized(spec, path, int(example.shape[0]))
        else:
            extra = write_fp32(model, example, path, spec)
            if spec.precision == "fp16":
                convert_fp16(path)
        info: dict[str, Any] = {"opset": spec.opset, "external_data": bool(extra), **check(path)}
        if spec.precision == "int8":
            from export.quant_stats import onnx_quantized_share

            info["quantized"] = onnx_quantized_share(path)
        return build_artifact(self.name, path, spec, self.runtime, tuple(extra), info)


def write_fp32(model: nn.Module, example: torch.Tensor, path: Path, spec: ExportContext) -> list[Path]:
    """Export with the dynamo exporter, embed metadata, write atomically; returns external data files."""
    nbytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    external = nbytes >= PROTOBUF_LIMIT_BYTES
    dim = spec.batch_dim()
    try:
        program = torch.onnx.export(
            model.eval(), (example,), dynamo=True, opset_version=spec.opset, verbose=False,
            input_names=list(spec.input_names), output_names=list(spec.output_names),
            dynamic_shapes=(dim,) if dim else None)
    except Exception as e:
        raise ExportError(f"torch.onnx.export failed for {spec.name}: {first_line(e)}",
                          "an op has no ONNX translation at this opset: raise export.opset "
                          "or use executorch") from e
    strip_debug_metadata(program.model)
    program.model.metadata_props.update(spec.embedded_metadata())
    # Save into a private folder, then move the data first and the .onnx last: a reader never
    # sees an .onnx whose external data is missing.
    build = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        program.save(str(build / path.name), external_data=external)
        if not external:  # short tensor ids, as in the int8 file (parameter names kept)
            compact_file(build / path.name)
        extra = []
        for f in sorted(build.iterdir()):
            if f.name != path.name:
                os.replace(f, path.parent / f.name)
                extra.append(path.parent / f.name)
        os.replace(build / path.name, path)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return extra


def adopt_quantized(spec: ExportContext, path: Path, batch: int = 1) -> list[Path]:
    """Copy the quantization stage's QDQ `.onnx` in, embedding kdtool metadata; without a dynamic
    batch (`spec.dynamic_batch`) its batch axis is fixed at `batch`."""
    import onnx

    src = spec.quantized_onnx
    if src is None or not Path(src).is_file():
        raise ExportError(f"onnx int8 needs a quantized .onnx, got {src}",
                          "run `kdtool quantize --mode static` first (ONNX Runtime QDQ)")
    proto = onnx.load(str(src))
    if not spec.dynamic_batch:
        fix_batch(proto, batch)
    strip_debug_metadata(proto)
    compact_names(proto)  # any QDQ file may be adopted; on one quantize wrote, the ids come out the same
    _set_metadata(proto, spec.embedded_metadata())
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    return []


def fix_batch(proto: Any, batch: int) -> None:
    """Fix the first input's batch axis of a dynamic-batch graph at `batch` (ONNX Runtime's own
    `make_input_shape_fixed` + `fix_output_shapes`, as its mobile tooling does), in place."""
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_input_shape_fixed

    first = proto.graph.input[0]
    dims = first.type.tensor_type.shape.dim
    shape = [batch] + [d.dim_value for d in dims[1:]]
    if not dims[0].HasField("dim_value") or dims[0].dim_value != batch:
        make_input_shape_fixed(proto.graph, first.name, shape)
        fix_output_shapes(proto)


def convert_fp16(path: Path) -> None:
    """Rewrite an fp32 `.onnx` with fp16 weights and compute (inputs/outputs stay fp32)."""
    import onnx
    import onnx_ir
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = onnx_ir.from_proto(convert_float_to_float16(onnx.load(str(path)), keep_io_types=True))
    half.graph.sort()  # the converter appends the output casts out of topological order
    with atomic_path(path) as tmp:
        onnx.save(onnx_ir.to_proto(half), str(tmp))


def check(path: Path) -> dict[str, Any]:
    """`onnx.checker` and strict shape inference; returns the inferred output shapes."""
    import onnx

    try:
        onnx.checker.check_model(str(path))
        proto = onnx.load(str(path), load_external_data=False)
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except Exception as e:
        raise ExportError(f"{path.name} fails the ONNX checker: {first_line(e)}",
                          "report the model and opset; try another export.opset") from e
    shapes = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]
              for o in inferred.graph.output}
    return {"output_shapes": shapes, "nodes": len(proto.graph.node),
            "ir_version": proto.ir_version}


def read_metadata(path: Path) -> dict[str, str]:
    """The `metadata_props` of an `.onnx` file (without loading external weights)."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def convert_to_ort(path: Path, threads: int = 1) -> Path:
    """Also write the ORT-format `.ort` file (ONNX Runtime Mobile) beside `path`; returns its path.

    Uses ONNX Runtime's own serializer with basic (platform-independent) optimizations, as
    `onnxruntime.tools.convert_onnx_models_to_ort` does.
    """
    import onnxruntime as ort

    out = path.with_suffix(".ort")
    with atomic_path(out) as tmp:
        so = session_options(threads)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(tmp)
        so.add_session_config_entry("session.save_model_format", "ORT")
        ort_session(path, options=so, message=f"ORT-format conversion of {path.name} failed",
                    hint="use the .onnx file with full ONNX Runtime")
    return out


def _set_metadata(proto: Any, meta: dict[str, str]) -> None:
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in meta.items():
        if key in existing:
            existing[key].value = value
        else:
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
