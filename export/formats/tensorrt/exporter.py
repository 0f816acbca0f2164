"""TensorRT engine from the ONNX export, written for the TensorRT 10/11 Python API.

TensorRT 11 removed the FP16/INT8 builder flags and the implicit-INT8 calibrators, so precision
comes from the network itself: the network is created STRONGLY_TYPED and built from an ONNX graph
whose types already say it (fp32; fp16 weights and compute from the ONNX exporter's fp16 path;
int8 from the quantization stage's explicit Q/DQ `.onnx`). The batch axis gets an optimization
profile (1 / typical / max). An engine is tied to the GPU and TensorRT version that built it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.core.atomic import write_bytes
from compress.core.errors import ExportError
from export.artifact import Artifact
from export.formats.onnx.exporter import OnnxExporter
from export.registry import EXPORTERS, ExportContext, build_artifact, check_precision

WORKSPACE_BYTES = 1 << 30
OPT_BATCH = 8


def unavailable_reason() -> str | None:
    """None when TensorRT can build here, else why not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return 'TensorRT needs an NVIDIA GPU and `pip install "kdtool[tensorrt]"` (tensorrt is not installed)'
    if not torch.cuda.is_available():
        return 'TensorRT needs an NVIDIA GPU and `pip install "kdtool[tensorrt]"` (no CUDA device here)'
    return None


@EXPORTERS.register("tensorrt")
class TensorRTExporter:
    """TensorRT engine (.engine, strongly typed network from ONNX): NVIDIA GPU servers."""

    name = "tensorrt"
    runtime = "tensorrt"
    precisions = ("fp32", "fp16", "int8")

    def export(self, model: nn.Module, example: torch.Tensor, out_dir: Path, spec: ExportContext) -> Artifact:
        """Export ONNX at `spec.precision`, then build `<name>.<precision>.engine` for this GPU."""
        check_precision(self, spec)
        if spec.precision == "int8" and spec.quantized_onnx is not None:
            problem = int8_problem(spec.quantized_onnx)
            if problem:
                raise ExportError(f"tensorrt int8: {Path(spec.quantized_onnx).name} has {problem}; "
                                  "TensorRT takes symmetric int8 Q/DQ only (zero points 0)",
                                  "set quantize.onnx_activations: int8 and rerun `kdtool quantize --mode static`")
        reason = unavailable_reason()
        if reason:
            raise ExportError(reason, "use --format onnx on this machine")
        build = Path(tempfile.mkdtemp(prefix=".tensorrt.", dir=out_dir))
        try:
            onnx_artifact = OnnxExporter().export(model, example, build, spec)
            engine, info = build_engine(onnx_artifact.path, example, spec)
        finally:
            shutil.rmtree(build, ignore_errors=True)
        path = Path(out_dir) / f"{spec.name}.{spec.precision}.engine"
        write_bytes(path, engine)
        return build_artifact(self.name, path, spec, self.runtime, info=info)


def unsigned_activations(onnx_path: str | Path) -> bool:
    """True when a Q/DQ model quantizes some tensor to uint8 (ORT's U8S8 layout, not TensorRT's)."""
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    zero_points = {t.name: t.data_type for t in proto.graph.initializer}
    return any(node.op_type == "QuantizeLinear" and len(node.input) > 2
               and zero_points.get(node.input[2]) == onnx.TensorProto.UINT8 for node in proto.graph.node)


def nonzero_zero_points(onnx_path: str | Path) -> list[str]:
    """Names of Q/DQ zero points that are not all 0 (asymmetric ranges, which TensorRT refuses)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(onnx_path), load_external_data=False)
    values = {t.name: t for t in proto.graph.initializer}
    names = {n.input[2] for n in proto.graph.node
             if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2]}
    return sorted(n for n in names if n in values and np.any(numpy_helper.to_array(values[n]) != 0))


def int8_problem(onnx_path: str | Path) -> str | None:
    """Why TensorRT cannot build int8 from this Q/DQ model (uint8 or asymmetric ranges), or None."""
    if unsigned_activations(onnx_path):
        return "uint8 (asymmetric) activations"
    asymmetric = nonzero_zero_points(onnx_path)
    if asymmetric:
        return f"{len(asymmetric)} asymmetric int8 ranges (nonzero zero point {asymmetric[0]!r})"
    return None


def network_flags(trt: Any) -> int:
    """STRONGLY_TYPED where the flag exists (TensorRT 10); TensorRT 11 networks are always strongly typed."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def build_engine(onnx_path: Path, example: torch.Tensor, spec: ExportContext) -> tuple[bytes, dict[str, Any]]:
    """Parse `onnx_path` into a strongly typed network and build a serialized engine."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))  # no FP16/INT8 builder flags: gone in TensorRT 11
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads external .data beside the file too
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {onnx_path.name}: {errors[:300]}",
                          "an ONNX op is unsupported by this TensorRT version")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    shape = tuple(example.shape)
    if spec.dynamic_batch:
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            name = network.get_input(i).name
            profile.set_shape(name, (1, *shape[1:]), (min(OPT_BATCH, spec.max_batch), *shape[1:]),
                              (spec.max_batch, *shape[1:]))
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine for {spec.name}", "see the TensorRT log above")
    return bytes(serialized), {"tensorrt": trt.__version__, "strongly_typed": True,
                               "precision_from": "Q/DQ nodes" if spec.precision == "int8" else f"{spec.precision} ONNX",
                               "device": torch.cuda.get_device_name(0), "layers": network.num_layers}
