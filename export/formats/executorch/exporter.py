"""ExecuTorch `.pte`: torch.export → `to_edge_transform_and_lower` with the XNNPACK (or CoreML) delegate.

- fp32: the student as given, lowered to XNNPACK.
- int8: a PT2E-converted model (`convert_pt2e` output with the XNNPACK quantizer, made by the
  quantization stage and passed as `spec.quantized_program`) is exported again and lowered; XNNPACK
  takes the quantize/dequantize patterns as real int8 kernels.
- variant "coreml" (iOS): the CoreML partitioner ahead of time; it runs only in an ExecuTorch
  runtime built with the CoreML backend (iOS/macOS), so parity here is "not verified on this OS".

Metadata is stored as a constant method `kdtool_metadata` (a JSON string) in the program, and the
delegation share (ops inside delegate blobs vs all ops, from `executorch.devtools` delegation info)
goes into `Artifact.info["delegation"]`.

Dynamic batch. ExecuTorch memory-plans every tensor at the batch axis' upper bound, so the arena
grows with `max_batch`: it is capped at `EXECUTORCH_MAX_BATCH` (on-device inference runs batch 1).
Two lowering steps narrow that bound silently (executorch 1.5.1), and kdtool undoes both:
- XNNPACK's FuseBatchNormPass re-traces convolutions with fake tensors; ATen's conv-backend choice
  asks "batch >= 16" (the NNPACK heuristic), an ignored guard that still narrows the shape env's
  range to [2, 15]: programs with conv+BN would refuse batch >= 16 at `set_inputs` (error 0x10).
  The bound torch.export proved (`range_constraints`) is restored after lowering.
- ExecuTorch's IR-validity verifier indexes the first tensor of a `Tensor[]` result
  (`split_with_sizes`, used by MobileViTv2's attention) as if it were the list, pinning the batch to
  the example's: the program then fails at run time for any other batch. When lowering pins the
  batch, it is redone without that verifier (parity still checks the result).
Each XNNPACK program is run once at batch 1 and at its planned upper bound before it is written; if
that fails, it is re-exported with a fixed batch and `info["dynamic_batch_reason"]` says why.
`info["max_batch"]` is the planned upper bound (the example's batch when fixed).

Pooling. XNNPACK refuses `avg_pool2d(ceil_mode=True)` (timm's ResNet-D `avg_down` shortcut, so
ResNet-10-T/-26-D/-50-D), which cuts the graph into several delegate partitions with the pools on
portable kernels. Where the input's height and width are static and `(size + 2·pad − kernel)` is a
multiple of the stride, ceil and floor give the same windows: `exact_floor_pooling` sets
`ceil_mode=False` there before lowering (the quickstart student goes from 4 partitions to 1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.core.atomic import write_bytes
from compress.core.errors import ExportError
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
EXECUTORCH_MAX_BATCH = 32  # memory planning allocates for the upper bound: keep the arena small
BOOKKEEPING_OPS = {"getitem"}  # tuple unpacking, not compute: left out of the delegation share


@EXPORTERS.register("executorch")
class ExecuTorchExporter:
    """ExecuTorch (XNNPACK delegate; CoreML delegate for variant 'coreml'): Android/iOS on-device."""

    name = "executorch"
    runtime = "executorch"
    precisions = ("fp32", "fp16", "int8")

    def export(self, model: nn.Module, example: torch.Tensor, out_dir: Path, spec: ExportContext) -> Artifact:
        """Lower to `<name>[.<variant>].<precision>.pte` and report the delegation share."""
        info: dict[str, Any] = {}
        spec.max_batch = min(spec.max_batch, EXECUTORCH_MAX_BATCH)
        if spec.variant == "coreml":
            if spec.precision == "int8":
                raise ExportError("executorch-coreml int8 is not supported by kdtool",
                                  "use executorch int8 (XNNPACK) or coreml fp16")
            partitioners = [coreml_partitioner(spec.precision)]
            program = export_program(model.eval(), example, spec)
        elif spec.precision == "fp16":
            raise ExportError("executorch fp16 is only made with the CoreML delegate",
                              "use precision fp32 or int8 for XNNPACK, or the ios target")
        else:
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

            partitioners = [XnnpackPartitioner()]
            program = self._program(model, example, spec, info)
        try:
            try:
                try:
                    buffer = self._lower(program, partitioners, spec, info)
                except (_DynamicBatchFailed, ExportError):
                    raise
                except Exception as e:  # e.g. CoreML: "Cannot add const [s55, 1, 64, 4, 4]" (a symbolic reshape)
                    if not spec.dynamic_batch:
                        raise
                    raise _DynamicBatchFailed(f"lowering failed with a dynamic batch: {first_line(e)}") from e
                if spec.variant != "coreml" and spec.dynamic_batch:
                    _smoke_test(buffer, user_input_shape(program), info["max_batch"])
            except _DynamicBatchFailed as e:  # a program that runs at one batch beats one that fails
                spec.dynamic_batch = False
                info["dynamic_batch_reason"] = str(e)
                info.pop("ir_validity_check", None)
                buffer = self._lower(self._static_program(model, example, spec), partitioners, spec, info)
        except ExportError:
            raise
        except Exception as e:
            raise ExportError(f"ExecuTorch lowering failed for {spec.name}: {first_line(e)}",
                              "an op has no Edge/XNNPACK lowering: try --format onnx") from e
        suffix = f".{spec.variant}" if spec.variant else ""
        path = Path(out_dir) / f"{spec.name}{suffix}.{spec.precision}.pte"
        write_bytes(path, buffer)
        info["backend"] = "CoreMLBackend" if spec.variant == "coreml" else "XnnpackBackend"
        return build_artifact(self.name, path, spec, self.runtime, info=info)

    def _lower(self, program: torch.export.ExportedProgram, partitioners: list[Any], spec: ExportContext,
               info: dict[str, Any]) -> bytes:
        """Edge → delegates → `.pte` bytes, keeping the batch bound torch.export proved (module docstring)."""
        from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

        def lower(check_ir: bool) -> Any:
            return to_edge_transform_and_lower(
                program, partitioner=partitioners, compile_config=EdgeCompileConfig(_check_ir_validity=check_ir),
                constant_methods={METADATA_METHOD: json.dumps(spec.embedded_metadata(), sort_keys=True)})

        if spec.variant != "coreml":
            info["floor_pools"] = exact_floor_pooling(program)
        bound = _batch_bound(program)
        check_ir = bound is None or not _list_output_with_batch(program)
        if not check_ir:
            info["ir_validity_check"] = "skipped: it would pin the dynamic batch (an op returns Tensor[])"
        edge = lower(check_ir)
        if bound is not None and _batch_pinned(edge.exported_program()):
            raise _DynamicBatchFailed("lowering pinned the batch axis to the example's batch")
        if bound is not None:
            _restore_batch_bound(edge.exported_program(), bound)
        info["delegation"] = delegation_share(edge.exported_program().graph_module)
        et_program = edge.to_executorch()
        shape = user_input_shape(et_program.exported_program())
        info["max_batch"] = _upper_bound(shape[0])
        plan = et_program.executorch_program.execution_plan[0]
        info["planned_memory_mb"] = round(sum(plan.non_const_buffer_sizes) / 2**20, 3)
        return et_program.buffer

    def _static_program(self, model: nn.Module, example: torch.Tensor,
                        spec: ExportContext) -> torch.export.ExportedProgram:
        """The fixed-batch re-export used when the dynamic-batch program cannot run."""
        source = model.eval() if spec.precision != "int8" else spec.quantized_program
        if isinstance(source, torch.export.ExportedProgram):
            source = source.module()
        return export_program(source, example, spec)

    def _program(self, model: nn.Module, example: torch.Tensor, spec: ExportContext,
                 info: dict[str, Any]) -> torch.export.ExportedProgram:
        if spec.precision == "fp32":
            return export_program(model.eval(), example, spec)
        quantized = spec.quantized_program
        if quantized is None:
            raise ExportError("executorch int8 needs a PT2E-quantized model (spec.quantized_program)",
                              "run `kdtool quantize --mode static|qat` first")
        from export.quant_stats import pt2e_quantized_share

        if isinstance(quantized, torch.export.ExportedProgram):
            info["quantized"] = pt2e_quantized_share(quantized.module())
            if not spec.dynamic_batch:  # a static batch was asked for: re-trace at the example's
                return export_program(quantized.module(), example, spec)
            spec.dynamic_batch = any(not isinstance(d, int) for d in user_input_shape(quantized))
            return quantized
        info["quantized"] = pt2e_quantized_share(quantized)
        if spec.dynamic_batch and not _batch_is_symbolic(quantized):
            spec.dynamic_batch = False  # calibrated on a static export: a dynamic re-export fails at run time
        return export_program(quantized, example, spec)


def exact_floor_pooling(program: torch.export.ExportedProgram) -> int:
    """Turn `ceil_mode=True` off on the 2-D avg/max pools where it changes nothing (module docstring).

    Returns how many pools were changed. Pools whose spatial size is symbolic, or where rounding
    up would add a window, are left as they are.
    """
    pools = {torch.ops.aten.avg_pool2d.default: 4, torch.ops.aten.max_pool2d.default: 5}
    changed = 0
    for node in program.graph_module.graph.nodes:
        where = pools.get(node.target)
        if where is None or len(node.args) <= where or not node.args[where]:
            continue
        val = node.args[0].meta.get("val") if isinstance(node.args[0], torch.fx.Node) else None
        if val is None or val.dim() != 4 or not all(isinstance(d, int) for d in val.shape[2:]):
            continue
        kernel = _pair(node.args[1])
        stride = _pair(node.args[2]) if len(node.args) > 2 and node.args[2] else kernel
        padding = _pair(node.args[3]) if len(node.args) > 3 else (0, 0)
        dilation = _pair(node.args[4]) if where == 5 and len(node.args) > 4 else (1, 1)
        if all((size + 2 * p - d * (k - 1) - 1) % s == 0
               for size, k, s, p, d in zip(val.shape[2:], kernel, stride, padding, dilation, strict=True)):
            args = list(node.args)
            args[where] = False
            node.args = tuple(args)
            changed += 1
    if changed:
        program.graph_module.recompile()
    return changed


def _pair(v: Any) -> tuple[int, int]:
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return (int(v[0]), int(v[-1]))


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
    from compress.core.native import quiet_native

    with quiet_native():  # the runtime's C++ cpuinfo/threadpool lines (shown with --debug)
        from executorch.runtime import Runtime

        program = Runtime.get().load_program(Path(path))
    return json.loads(program.load_method(METADATA_METHOD).execute([])[0])



def _batch_is_symbolic(graph_module: torch.fx.GraphModule) -> bool:
    """Whether the first input of a PT2E graph was traced with a dynamic batch axis."""
    for node in graph_module.graph.nodes:
        if node.op == "placeholder" and isinstance(node.meta.get("val"), torch.Tensor):
            return not isinstance(node.meta["val"].shape[0], int)
    return False


def _batch_bound(program: torch.export.ExportedProgram) -> tuple[Any, int] | None:
    """(symbol, upper bound) of the input's batch axis as torch.export proved it; None when static."""
    batch = user_input_shape(program)[0]
    if isinstance(batch, int):
        return None
    symbol = batch.node.expr
    upper = program.range_constraints.get(symbol)
    if upper is None:
        return None
    # a program exported with Dim.AUTO (e.g. PT2E-quantized) is unbounded (torch's int_oo): plan for the cap
    return symbol, EXECUTORCH_MAX_BATCH if upper.upper > EXECUTORCH_MAX_BATCH else int(upper.upper)


def _list_output_with_batch(program: torch.export.ExportedProgram) -> bool:
    """Whether an op returns `Tensor[]` with a symbolic leading axis (ExecuTorch's verifier then pins it)."""
    for node in program.graph.nodes:
        val = node.meta.get("val")
        returns = getattr(getattr(node.target, "_schema", None), "returns", ())
        if (node.op == "call_function" and len(returns) == 1 and str(returns[0].type) == "List[Tensor]"
                and isinstance(val, (list, tuple)) and val and isinstance(val[0], torch.Tensor)
                and val[0].ndim and not isinstance(val[0].shape[0], int)):
            return True
    return False


def _batch_pinned(program: torch.export.ExportedProgram) -> bool:
    """Whether lowering replaced the batch symbol by a constant (the program then runs at one batch only)."""
    batch = user_input_shape(program)[0]
    if isinstance(batch, int):
        return True
    env = batch.node.shape_env
    value_range = env.var_to_range.get(batch.node.expr)
    return bool(env.replace(batch.node.expr).is_number or (value_range and value_range.is_singleton()))


def _restore_batch_bound(program: torch.export.ExportedProgram, bound: tuple[Any, int]) -> None:
    """Undo an upper bound narrowed by an ignored guard during lowering (memory planning reads it)."""
    from torch.utils._sympy.value_ranges import ValueRanges

    env = user_input_shape(program)[0].node.shape_env
    symbol, upper = bound
    current = env.var_to_range.get(symbol)
    if current is not None and current.upper < upper:
        env.var_to_range[symbol] = ValueRanges(current.lower, upper)


def _upper_bound(size: Any) -> int:
    """A static size, or the upper bound ExecuTorch memory-plans a symbolic one for."""
    if isinstance(size, int):
        return size
    from executorch.exir.sym_util import eval_upper_bound

    return int(eval_upper_bound(size))


def _smoke_test(buffer: bytes, shape: tuple[Any, ...], max_batch: int) -> None:
    """Run the program on zeros at batch 1 and `max_batch`; raise `_DynamicBatchFailed` on an error."""
    from compress.core.native import quiet_native

    with quiet_native():  # the runtime's C++ cpuinfo/threadpool lines (shown with --debug)
        from executorch.runtime import Runtime

        method = Runtime.get().load_program(buffer).load_method("forward")
    for batch in sorted({1, max_batch}):
        try:
            method.execute([torch.zeros((batch, *(int(d) for d in shape[1:])))])
        except Exception as e:  # the runtime raises RuntimeError carrying the error code
            raise _DynamicBatchFailed(f"dynamic-batch program failed at batch {batch}: {first_line(e)}") from e


class _DynamicBatchFailed(Exception):
    """The dynamic-batch program cannot run at every batch it was planned for (caught by the exporter)."""
