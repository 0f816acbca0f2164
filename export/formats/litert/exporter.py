"""LiteRT `.tflite` (formerly TensorFlow Lite) via litert-torch: Android's most deployed runtime.

- fp32: `litert_torch.convert(model, (example,))`: torch.export → StableHLO → the LiteRT converter.
- int8: litert-torch's own PT2E quantizer (`quantizer.py`), calibrated here on the quantization
  stage's calibration samples; the converter turns the Q/DQ pairs into int8 kernels. The file is
  fully integer: its input and output tensors are int8 with a scale and zero point
  (`info["io"]`), as Android apps run such models; the runtime quantizes and dequantizes them.

The batch is static (the example's, 1 for android): LiteRT files carry fixed shapes, and
`info["dynamic_batch"]` is False. Metadata is a flatbuffer `metadata` entry named
`kdtool_metadata` holding the JSON of `spec.embedded_metadata()`, beside the converter's own
entries (`min_runtime_version`); `read_metadata` reads it back.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.core.atomic import write_bytes
from compress.core.errors import ExportError
from export.artifact import Artifact
from export.extras import missing_extra
from export.registry import EXPORTERS, ExportContext, build_artifact, check_precision, first_line

METADATA_NAME = "kdtool_metadata"
COMPUTE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV")
"""Ops that hold a model's multiply-adds: the int8 share is counted over these."""


def unavailable_reason(precision: str = "fp32") -> str | None:
    """None when litert-torch and ai-edge-litert are installed (any `precision`), else the reason with
    the install hint."""
    return missing_extra("litert", ("litert_torch", "ai_edge_litert"), "LiteRT export")


@EXPORTERS.register("litert")
class LiteRTExporter:
    """LiteRT `.tflite` (litert-torch converter; XNNPACK on the CPU): Android on-device."""

    name = "litert"
    runtime = "litert"
    precisions = ("fp32", "int8")
    calibrates_int8 = True  # its int8 is calibrated by the exporter on `spec.calibration`
    unavailable = staticmethod(unavailable_reason)

    def export(self, model: nn.Module, example: torch.Tensor, out_dir: Path, spec: ExportContext) -> Artifact:
        """Convert to `<name>.<precision>.tflite` at the example's batch, metadata embedded."""
        check_precision(self, spec)
        reason = unavailable_reason()
        if reason:
            raise ExportError(reason, "or pick another format for android: executorch, onnx")
        spec.dynamic_batch = False  # LiteRT files have static shapes
        info: dict[str, Any] = {"batch": int(example.shape[0])}
        source, quant_config = model.eval(), None
        if spec.precision == "int8":
            from export.formats.litert.quantizer import quantize_pt2e

            source, quant_config, info["calibration_samples"] = quantize_pt2e(model, example, spec)
        data = embed_metadata(convert(source, example, quant_config, spec.name), spec.embedded_metadata())
        path = Path(out_dir) / f"{spec.name}.{spec.precision}.tflite"
        write_bytes(path, data)
        info.update(describe(data))
        return build_artifact(self.name, path, spec, self.runtime, info=info)


def convert(module: nn.Module, example: torch.Tensor, quant_config: Any, name: str) -> bytes:
    """The `.tflite` bytes of `module` traced on `example`; a converter failure names its first line."""
    from compress.core.native import quiet_native

    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")  # its per-pass progress lines
    with quiet_native():  # TensorFlow/absl start-up lines from C++ (shown with --debug)
        import litert_torch
    try:
        with quiet_native():
            edge = litert_torch.convert(module, (example,), quant_config=quant_config)
    except Exception as e:  # torch.export, lowering and the MLIR converter raise many types
        raise ExportError(f"litert-torch cannot convert {name}: {first_line(e)}",
                          "an op has no LiteRT lowering: use executorch or onnx for this model") from e
    return bytes(edge.model_content())


def embed_metadata(data: bytes, metadata: dict[str, str]) -> bytes:
    """`data` with a flatbuffer metadata entry `kdtool_metadata` (a JSON buffer) added."""
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata, sort_keys=True).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if _name(m) != METADATA_NAME] + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_metadata(path: Path) -> dict[str, str]:
    """The `kdtool_metadata` entry of a `.tflite` written by this exporter ({} when it has none)."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    for entry in model.metadata or []:
        if _name(entry) == METADATA_NAME:
            return json.loads(bytes(model.buffers[entry.buffer].data).decode())
    return {}


def describe(data: bytes) -> dict[str, Any]:
    """Facts about a `.tflite`: op counts, int8 share of the compute ops, input/output types."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    graph = model.subgraphs[0]
    names = [flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) for op in graph.operators]
    compute = [op for op, n in zip(graph.operators, names, strict=True) if n in COMPUTE_OPS]
    quantized = [op for op in compute if flatbuffer_utils.type_to_name(graph.tensors[op.inputs[0]].type) == "INT8"]
    io = {kind: flatbuffer_utils.type_to_name(graph.tensors[ids[0]].type).lower()
          for kind, ids in (("input", graph.inputs), ("output", graph.outputs))}
    return {"ops": dict(Counter(names)), "io": io,
            "quantized": {"compute_ops": len(compute), "int8_compute_ops": len(quantized),
                          "op_share": round(len(quantized) / len(compute), 4) if compute else 0.0}}


def _name(entry: Any) -> str:
    name = entry.name
    return name.decode() if isinstance(name, bytes) else str(name)
