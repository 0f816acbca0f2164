"""CoreML int8 of the coreml format: linear weight quantization (or k-means palettization) of an mlpackage.

Registered in `compress.quant.formats.FILE_INT8` as backend `coreml` (static mode, made for the ios
target): the quantize stage reaches it there without importing `export`.
Conversion runs on Linux; prediction needs macOS, so the model is written and inspected here but
not run. The fp32 mlpackage is converted the same way (float32 compute precision) for the size ratio.
"""

from __future__ import annotations

import copy
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from torch import nn

from compress.core.atomic import atomic_path, size_on_disk_mb
from compress.core.errors import ExportError, KdtoolError
from compress.quant.common import finish_meta, provenance
from compress.quant.configs import Int8StaticConfig, QuantConfig, QuantInputs, QuantizedModel
from compress.quant.formats import FILE_INT8
from export.decompose import convert_decomposing, decomposition_facts
from export.formats.coreml.exporter import drop_aliases

WEIGHT_OPS = {"conv", "linear", "matmul", "conv_transpose"}


def coreml_weights(model: nn.Module, config: Int8StaticConfig, qi: QuantInputs) -> QuantizedModel:
    """Convert to an mlprogram and compress its weights to int8 per-channel (or `palettize_bits` LUTs).

    Args:
        model: the fp32 student (not modified).
        config: `per_channel`, `palettize_bits`; calibration is not used (weights only).
        qi: example input (its first sample fixes the input shape) and output folder.
    """
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    if qi.out is None:
        raise KdtoolError("quantize static (coreml): no output folder given", "pass out=<folder>")
    example = qi.example[:1]
    from compress.core.native import quiet_native

    def convert(program):
        drop_aliases(program)
        return ct.convert(program, inputs=[ct.TensorType(name="input", shape=tuple(example.shape))],
                          convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                          compute_precision=ct.precision.FLOAT32, skip_model_load=True)

    try:
        with quiet_native():  # the converter's native prints (shown with --debug)
            mlmodel, program, decomposed, message = convert_decomposing(_export(model, example), convert)
    except Exception as e:  # coremltools raises many error types for unsupported ops
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise ExportError(f"quantize static (coreml): coremltools could not convert the model "
                          f"({type(e).__name__}: {first})",
                          "use backend executorch or onnx for this model") from e
    kept = float_weight_names(mlmodel, config.float_modules)
    if config.palettize_bits:
        op = cto.OpPalettizerConfig(nbits=config.palettize_bits, mode="kmeans", weight_threshold=256)
        compressed = cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=op, op_name_configs=kept))
        weights = f"{config.palettize_bits}-bit k-means palettized"
    else:
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", weight_threshold=256,
                                         granularity="per_channel" if config.per_channel else "per_tensor")
        compressed = cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(global_config=op,
                                                                                  op_name_configs=kept))
        weights = "int8 symmetric " + ("per-channel" if config.per_channel else "per-tensor")
    census = coreml_census(compressed)
    if census["compressed_weights"] == 0:
        raise ExportError("quantize static (coreml): no weight was compressed",
                          "the model's weights are below the 256-element threshold; use backend executorch")
    out = Path(qi.out)
    path = out / "model.mlpackage"
    with atomic_path(path, is_dir=True) as tmp:
        compressed.save(str(tmp / "model.mlpackage"))
        for child in (tmp / "model.mlpackage").iterdir():
            child.rename(tmp / child.name)
        (tmp / "model.mlpackage").rmdir()
    with tempfile.TemporaryDirectory() as scratch:
        mlmodel.save(str(Path(scratch) / "fp32.mlpackage"))
        fp32_mb = size_on_disk_mb(Path(scratch) / "fp32.mlpackage")
    notes = ["CoreML compresses weights only: activations run in float (no calibrated activation int8)",
             "conversion only on Linux: prediction (metric, parity) needs macOS"]
    facts = decomposition_facts("coremltools", decomposed, message, model.eval(), program, example)
    notes += facts.pop("notes", [])
    if kept:
        notes.append(f"kept in float: {', '.join(config.float_modules)} ({len(kept)} weight tensors)")
    meta = provenance(config, qi.seed, None, ("coremltools",), notes, weights=weights,
                      activations="float32 (weights dequantized at load)", int8=census,
                      input_shape=list(example.shape), **facts)
    qm = QuantizedModel("static", "coreml", path=path, meta=meta)
    finish_meta(qm, size_on_disk_mb(path), fp32_mb)
    return qm


def float_weight_names(mlmodel, modules: tuple[str, ...]) -> dict[str, None]:
    """`op_name_configs` that leave the weights of `modules` (a block covers its children) uncompressed.

    The converter names a weight's const op after its torch.export placeholder: `p_` (parameter) or
    `b_` (buffer) and the dotted path with `_` (`b_0_frontend_dft` for `0.frontend.dft`). Without
    this, the log-mel front end's DFT kernel was int8 too, and its all-zero rows (the sine of bin 0
    and Nyquist) gave coremltools a zero scale ("invalid value encountered in divide").
    """
    if not modules:
        return {}
    prefixes = tuple(f"{kind}_{m.replace('.', '_')}_" for m in modules for kind in ("p", "b"))
    return {op.name: None for f in mlmodel._mil_program.functions.values() for op in f.operations
            if op.op_type == "const" and op.name.startswith(prefixes)}


def _export(model: nn.Module, example):
    import torch

    return torch.export.export(copy.deepcopy(model).eval(), (example,)).run_decompositions({})


def coreml_census(mlmodel) -> dict[str, Any]:
    """Count compressed weight ops (`constexpr_*`) against conv/linear/matmul ops in the MIL program."""
    ops = Counter(op.op_type for f in mlmodel._mil_program.functions.values() for op in f.operations)
    compressed = sum(n for t, n in ops.items() if t.startswith("constexpr_"))
    layers = sum(n for t, n in ops.items() if t in WEIGHT_OPS)
    return {"compressed_weights": compressed, "weight_layers": layers,
            "quantized_share": round(min(compressed / layers, 1.0), 4) if layers else 0.0}


class CoreMLInt8:
    """coremltools weight compression of the coreml format (weights only; activations stay float)."""

    modes = ("static",)
    targets = ("ios",)
    searchable = False  # weights only: no calibrated activations whose layers the search could keep float
    refusals = {"dynamic": ("CoreML has no dynamic activation quantization; use static (weights int8) "
                            "with backend coreml", "set quantize mode static for the ios target")}

    def quantize(self, model: nn.Module, config: QuantConfig, qi: QuantInputs) -> QuantizedModel:
        """`coreml_weights`."""
        return coreml_weights(model, config, qi)

    def trials(self, model: nn.Module, config: QuantConfig, qi: QuantInputs, batches: list, scratch: Path):
        """Not searchable: CoreML prediction needs macOS, so no trial can run here."""
        raise ExportError("quantize static (coreml): the accuracy-aware search cannot run CoreML on this OS",
                          "use backend executorch or onnx for the search")


FILE_INT8.register("coreml", "coremltools int8 weight compression (or palettization) of an mlpackage")(CoreMLInt8())
