"""PT2E quantization with the XNNPACK quantizer: its `.pt2` is what ExecuTorch lowers to int8 kernels.

Static: `torch.export` → `prepare_pt2e` (observers) → calibrate on training samples → `convert_pt2e`.
Dynamic: the same quantizer's dynamic config (linear layers; activation scales computed per batch).
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from compress.quant.common import (
    count_calibrated,
    export_graph,
    input_batches,
    int8_census_torch,
    provenance,
    require_quantized,
    save_torch_quantized,
    strip_unused_attributes,
)
from compress.quant.configs import Int8DynamicConfig, Int8StaticConfig, QuantConfig, QuantInputs, QuantizedModel


def xnnpack_quantizer(per_channel: bool, is_dynamic: bool = False, is_qat: bool = False):
    """The XNNPACK quantizer with ExecuTorch's symmetric int8 config (per-channel weights by default).

    The dynamic config is set on `nn.Linear` modules only. Set globally it also quantizes standalone
    convolutions dynamically, and XNNPACK (executorch 1.5.1) then fails at run time on some of them
    (MobileViTv2's 1x1 convs fed by a broadcast multiply or F.fold: "Propagating input shapes failed:
    xnn_status_invalid_parameter", error 0x1, measured here); the program lowers but cannot run.
    Convolutions are what static PTQ is for.
    """
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    config = get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=is_dynamic,
                                               is_qat=is_qat)
    if is_dynamic:
        return XNNPACKQuantizer().set_module_type(torch.nn.Linear, config)
    return XNNPACKQuantizer().set_global(config)


def finish_pt2e(converted: nn.Module, qi: QuantInputs, config: QuantConfig, calibrated: int | None, instead: str,
                fp32_mb: float, notes: list[str] | None = None, **facts: Any) -> QuantizedModel:
    """Strip the float leftovers, check int8 weights are present, re-export, save and record provenance.

    `facts` are extra meta entries (e.g. QAT's per-epoch loss history).
    """
    converted = strip_unused_attributes(converted)
    census = int8_census_torch(converted)
    require_quantized(census, config.mode, config.backend, instead)
    program = export_graph(converted, qi.example, config.mode)
    meta = provenance(config, qi.seed, calibrated, ("executorch",), notes,
                      weights="int8 symmetric " + ("per-channel" if isinstance(config, Int8DynamicConfig)
                                                   or config.per_channel else "per-tensor"),
                      activations="int8 dynamic (per batch)" if config.mode == "dynamic" else "int8 static",
                      int8=census, **facts)
    qm = QuantizedModel(config.mode, config.backend, module=converted, program=program, meta=meta)
    return save_torch_quantized(qm, qi.out, fp32_mb)


def pt2e_static(model: nn.Module, config: Int8StaticConfig, qi: QuantInputs,
                fp32_mb: float) -> QuantizedModel:
    """Static PTQ: observers calibrated on `config.calibration_samples` training samples, then convert."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if qi.calibration is None:
        from compress.core.errors import KdtoolError

        raise KdtoolError("quantize static: no calibration data given", "pass calibration=<training loader>")
    graph = export_graph(copy.deepcopy(model).eval(), qi.example, "static").module()
    prepared = prepare_pt2e(graph, xnnpack_quantizer(config.per_channel))
    batches = input_batches(qi.calibration, qi.preprocess, config.calibration_samples)
    calibrated = count_calibrated(batches, prepared)
    notes = [] if calibrated >= config.calibration_samples else [
        f"only {calibrated} calibration samples available (asked {config.calibration_samples})"]
    return finish_pt2e(convert_pt2e(prepared), qi, config, calibrated,
                       "mode dynamic with backend onnx", fp32_mb, notes)


def pt2e_dynamic(model: nn.Module, config: Int8DynamicConfig, qi: QuantInputs,
                 fp32_mb: float) -> QuantizedModel:
    """Dynamic int8 for ExecuTorch: XNNPACK's dynamic config quantizes linear layers (convs stay fp32)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    graph = export_graph(copy.deepcopy(model).eval(), qi.example, "dynamic").module()
    prepared = prepare_pt2e(graph, xnnpack_quantizer(per_channel=True, is_dynamic=True))
    prepared(qi.example)  # dynamic observers only record weights; one pass inserts the q/dq pattern
    notes = ["XNNPACK dynamic quantization covers linear layers; convolutions stay fp32 (static covers them)"]
    return finish_pt2e(convert_pt2e(prepared), qi, config, None,
                       "mode static (it quantizes convolutions too)", fp32_mb, notes)
