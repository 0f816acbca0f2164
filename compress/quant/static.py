"""Static post-training INT8: activation ranges calibrated on N training samples, per-channel int8 weights.

Backends: `executorch` (PT2E + XNNPACK quantizer), `onnx` (ORT QDQ `quantize_static`) and `coreml`
(coremltools int8 weight quantization or palettization; CoreML runs activations in float).
"""

from __future__ import annotations

from torch import nn

from compress.quant.common import program_size_mb
from compress.quant.configs import Int8StaticConfig, QuantInputs, QuantizedModel


def quantize_static(model: nn.Module, config: Int8StaticConfig, qi: QuantInputs) -> QuantizedModel:
    """Static INT8 on `config.backend`.

    Args:
        model: the fp32 student (not modified).
        config: backend, calibration size, per-channel weights, CoreML palettization bits.
        qi: example input, calibration loader with its preprocessing, output folder, seed.

    Returns:
        The quantized model with its provenance (saved under `qi.out` when given).
    """
    if config.backend == "onnx":
        from compress.quant.onnx_ort import ort_static

        return ort_static(model, config, qi)
    if config.backend == "coreml":
        from compress.quant.coreml_weights import coreml_weights

        return coreml_weights(model, config, qi)
    from compress.quant.pt2e import pt2e_static

    return pt2e_static(model, config, qi, program_size_mb(model.eval(), qi.example, "static"))
