"""Static post-training INT8: activation ranges calibrated on N training samples, per-channel int8 weights.

Backends: `executorch` (PT2E + XNNPACK quantizer) here; a file format's own int8 writer (ONNX Runtime
QDQ `quantize_static` in `export/formats/onnx/`, coremltools weight compression in
`export/formats/coreml/`) through `compress.quant.formats.FILE_INT8`.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from compress.quant.common import kept_float_modules, program_size_mb
from compress.quant.configs import Int8StaticConfig, QuantInputs, QuantizedModel
from compress.quant.formats import file_int8


def with_kept_float(model: nn.Module, config: Int8StaticConfig) -> Int8StaticConfig:
    """`config` with the modules that declare `keep_float_in_int8 = True` added to its `float_modules`.

    A signal-processing front end (`LogMelFrontend`: DFT, power, log) has a dynamic range int8 cannot
    hold: per-tensor int8 on a power spectrum rounds the quiet bins to 0 and the log turns them into
    the largest errors of the model. Its class says so, and static INT8 leaves it float.
    """
    marked = tuple(name for name in kept_float_modules(model) if name not in config.float_modules)
    return dataclasses.replace(config, float_modules=(*config.float_modules, *marked)) if marked else config


def quantize_static(model: nn.Module, config: Int8StaticConfig, qi: QuantInputs) -> QuantizedModel:
    """Static INT8 on `config.backend`.

    Args:
        model: the fp32 student (not modified).
        config: backend, calibration size, per-channel weights, CoreML palettization bits.
        qi: example input, calibration loader with its preprocessing, output folder, seed.

    Returns:
        The quantized model with its provenance (saved under `qi.out` when given).
    """
    config = with_kept_float(model, config)
    if config.backend not in config.backends:
        return file_int8(config).quantize(model, config, qi)
    from compress.quant.pt2e import pt2e_static

    return pt2e_static(model, config, qi, program_size_mb(model.eval(), qi.example, "static"))
