"""LiteRT int8: litert-torch's PT2E quantizer (static, per-channel int8 weights, int8 activations).

`torch.export` → `prepare_pt2e(graph, PT2EQuantizer)` → calibrate on the quantization stage's
calibration samples → `convert_pt2e(fold_quantize=False)`; `litert_torch.convert` then takes the
Q/DQ graph with the same quantizer in its `QuantConfig`. The accuracy-aware floor
(`quantize.min_retention`) is not applied here: litert-torch's quantizer cannot leave a module
float (`set_module_name(name, None)` is refused), so the parity check (decisions and the metric
against the fp32 student) is what judges this file.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compress.core.errors import ExportError
from export.calibration import fixed_batches
from export.registry import ExportContext, first_line


def quantize_pt2e(model: nn.Module, example: torch.Tensor, spec: ExportContext) -> tuple[nn.Module, Any, int]:
    """The calibrated, converted PT2E graph, litert-torch's `QuantConfig` for it, and the samples seen.

    Raises:
        ExportError: no calibration samples, or the model cannot be captured or annotated.
    """
    if spec.calibration is None or len(spec.calibration) == 0:
        raise ExportError("litert int8 needs calibration samples (Quantized.calibration)",
                          "export from a recipe run (kdtool export), or pass Quantized(calibration=...)")
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    from compress.quant.pt2e import convert

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    try:
        graph = torch.export.export(model.eval(), (example,)).module()
        prepared = prepare_pt2e(graph, quantizer)
    except Exception as e:  # torch.export and the annotators raise many types
        raise ExportError(f"litert int8: PT2E capture failed for {spec.name}: {first_line(e)}",
                          "export litert fp32, or use executorch int8") from e
    seen = 0
    with torch.no_grad():
        for batch in fixed_batches(spec.calibration, int(example.shape[0])):
            prepared(batch)
            seen += len(batch)
    converted = move_exported_model_to_eval(convert(prepared, fold_quantize=False))  # litert-torch warns if not
    return converted, QuantConfig(pt2e_quantizer=quantizer), min(seen, len(spec.calibration))
