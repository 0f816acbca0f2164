"""ExecuTorch `.pte`: torch.export → `to_edge_transform_and_lower` with the XNNPACK (or CoreML) delegate.

- fp32: the student as given, lowered to XNNPACK.
- int8: a PT2E-converted model (`convert_pt2e` output with the XNNPACK quantizer, made by the
  quantization stage and passed as `ctx.quantized_program`) is exported again and lowered; XNNPACK
  takes the quantize/dequantize patterns as real int8 kernels.
- variant "coreml" (iOS): the CoreML partitioner ahead of time; it runs only in an ExecuTorch
  runtime built with the CoreML backend (iOS/macOS), so parity here is "not verified on this OS".

Metadata is stored as a constant method `kdtool_metadata` (a JSON string) in the program, and the
delegation share (ops inside delegate blobs vs all ops, from `executorch.devtools` delegation info)
goes into `Artifact.info["delegation"]`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.atomic import write_bytes
from compress.errors import ExportError
from export.artifact import Artifact
from export.registry import (
    EXPORTERS,
    ExportContext,
    build_artifact,
    export_program,
    first_line,
    user_input_shape,
)

METADATA_METHOD = "kdtool_metadata"
BOOKKEEPING_OPS = {"getitem"}  # tuple unpacking, not compute: left out of the delegation share


@EXPORTERS.register("executorch")
class ExecuTorchExporter:
    """ExecuTorch (XNNPACK delegate; CoreML delegate for variant 'coreml'): Android/iOS on-device."""

    name = "executorch"
    runtime = "executorch"
    precisions = ("fp32", "fp16", "int8")

    def export(self, model: nn.Module, example: torch.Tensor, out_dir: Path, ctx: ExportContext) -> Artifact:
        """Lower to `<name>[.<variant>].<precision>.pte` and report the delegation share."""
        info: dict[str, Any] = {}
        if ctx.variant == "coreml":
            if ctx.precision == "int8":
                raise ExportError("executorch-coreml int8 is not supported by kdtool",
                                  "use executorch int8 (XNNPACK) or coreml fp16")
            partitioners = [coreml_partitioner(ctx.precision)]
            program = export_program(model.eval(), example, ctx)
        elif ctx.precision == "fp16":
            raise ExportError("executorch fp16 is only made with the CoreML delegate",
                              "use precision fp32 or int8 for XNNPACK, or the ios target")
        else:
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

            partitioners = [XnnpackPartitioner()]
            program = self._program(model, example, ctx, info)
        try:
            from executorch.exir import to_edge_transform_and_lower

            edge = to_edge_transform_and_lower(
                program, partitioner=partitioners,
                constant_methods={METADATA_METHOD: json.dumps(ctx.embedded_metadata(), sort_keys=True)})
            info["delegation"] = delegation_share(edge.exported_program().graph_module)
            buffer = edge.to_executorch().buffer
        except ExportError:
            raise
        except Exception as e:
            raise ExportError(f"ExecuTorch lowering failed for {ctx.name}: {first_line(e)}",
                              "an op has no Edge/XNNPACK lowering: try --format onnx") from e
        suffix = f".{ctx.variant}" if ctx.variant else ""
        path = Path(out_dir) / f"{ctx.name}{suffix}.{ctx.precision}.pte"
        write_bytes(path, buffer)
        info["backend"] = "CoreMLBackend" if ctx.variant == "coreml" else "XnnpackBackend"
        return build_artifact(self.name, path, ctx, self.runtime, info=info)

    def _program(self, model: nn.Module, example: torch.Tensor, ctx: ExportContext,
                 info: dict[str, Any]) -> torch.export.ExportedProgram:
        if ctx.precision == "fp32":
            return export_program(model.eval(), example, ctx)
        quantized = ctx.quantized_program
        if quantized is None:
            raise ExportError("executorch int8 needs a PT2E-quantized model (ctx.quantized_program)",
                              "run `kdtool quantize --mode static|qat` first")
        from export.quant_stats import pt2e_quantized_share

        if isinstance(quantized, torch.export.ExportedProgram):
            ctx.dynamic_batch = any(not isinstance(d, int) for d in user_input_shape(quantized))
            info["quantized"] = pt2e_quantized_share(quantized.module())
            return quantized
        info["quantized"] = pt2e_quantized_share(quantized)
        if not _batch_is_symbolic(quantized):
            ctx.dynamic_batch = False  # calibrated on a static export: a dynamic re-export fails at run time
        return export_program(quantized, example, ctx)


def coreml_partitioner(precision: str) -> Any:
    """The ExecuTorch CoreML partitioner (ahead of time; runs on Linux) for fp16 or fp32 compute."""
    try:
        import coremltools as ct
        from executorch.backends.apple.coreml.compiler import CoreMLBackend
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner
    except ImportError as e:
        raise ExportError(f"the ExecuTorch CoreML partitioner is not importable: {e}",
                          "pip install coremltools (see pyproject.toml)") from e
    specs = CoreMLBackend.generate_compile_specs(
        compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
        minimum_deployment_target=ct.target.iOS17)
    return CoreMLPartitioner(compile_specs=specs)


def delegation_share(graph_module: torch.fx.GraphModule) -> dict[str, Any]:
    """How many ops went into delegate blobs vs stayed on portable kernels (ExecuTorch's own count)."""
    from executorch.devtools.backend_debug import get_delegation_info

    d = get_delegation_info(graph_module)
    left = {op: b.non_delegated for op, b in d.delegation_by_operator.items()
            if b.non_delegated and op not in BOOKKEEPING_OPS}
    delegated = d.num_delegated_nodes
    total = delegated + sum(left.values())
    return {"delegated_ops": delegated, "total_ops": total, "subgraphs": d.num_delegated_subgraphs,
            "share": round(delegated / total, 4) if total else 0.0, "not_delegated": left}


def read_metadata(path: Path) -> dict[str, str]:
    """The `kdtool_metadata` constant method of a `.pte` written by this exporter."""
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(Path(path))
    return json.loads(program.load_method(METADATA_METHOD).execute([])[0])



def _batch_is_symbolic(graph_module: torch.fx.GraphModule) -> bool:
    """Whether the first input of a PT2E graph was traced with a dynamic batch axis."""
    for node in graph_module.graph.nodes:
        if node.op == "placeholder" and isinstance(node.meta.get("val"), torch.Tensor):
            return not isinstance(node.meta["val"].shape[0], int)
    return False
