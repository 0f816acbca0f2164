"""Dynamic INT8: int8 weights, activations quantized on the fly (no calibration data).

Backends: `torch` (torchao `quantize_` with `Int8DynamicActivationInt8WeightConfig`, eager PyTorch,
nn.Linear only), `executorch` (PT2E, XNNPACK dynamic config) and a file format's own int8 writer
through `compress.quant.formats.FILE_INT8` (`onnx`: ORT `quantize_dynamic`, in `export/formats/onnx/`).
Convolutional nets gain little from the torch/executorch paths (their convolutions stay fp32); the
meta says so and records the quantized share.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path

import torch
from torch import nn

from compress.core.atomic import write_bytes
from compress.core.errors import ExportError
from compress.quant.common import (
    export_graph,
    finish_meta,
    int8_census_torch,
    program_size_mb,
    provenance,
    require_quantized,
    save_torch_quantized,
)
from compress.quant.configs import Int8DynamicConfig, QuantInputs, QuantizedModel
from compress.quant.formats import file_int8


def quantize_dynamic(model: nn.Module, config: Int8DynamicConfig, qi: QuantInputs) -> QuantizedModel:
    """Dynamic INT8 on `config.backend`.

    Args:
        model: the fp32 student (not modified).
        config: which backend.
        qi: example input, output folder, seed.

    Returns:
        The quantized model with its provenance (saved under `qi.out` when given).
    """
    if config.backend not in config.backends:
        return file_int8(config).quantize(model, config, qi)
    if config.backend == "executorch":
        from compress.quant.pt2e import pt2e_dynamic

        return pt2e_dynamic(model, config, qi, program_size_mb(model.eval(), qi.example, "dynamic"))
    return torchao_dynamic(model, config, qi)


def torchao_dynamic(model: nn.Module, config: Int8DynamicConfig, qi: QuantInputs) -> QuantizedModel:
    """torchao `quantize_(model, Int8DynamicActivationInt8WeightConfig())`: nn.Linear weights to int8.

    Needs no `torch.export`: a model export cannot capture is saved as a state dict (`model.pt`) instead
    of a `.pt2`, and reloading it means building the model and running `quantize_` again.
    """
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    quantized = copy.deepcopy(model).eval()
    quantize_(quantized, Int8DynamicActivationInt8WeightConfig())
    census = int8_census_torch(quantized)
    require_quantized(census, "dynamic", "torch", "mode static (backend executorch or onnx) or dynamic with "
                      "backend onnx, which also quantize convolutions")
    notes = ["torchao dynamic int8 quantizes nn.Linear only: convolutions stay fp32 (conv nets gain little)"]
    if census["quantized_share"] < 0.5:
        notes.append(f"only {census['quantized_share']:.0%} of weight elements are int8")
    meta = provenance(config, qi.seed, None, (), notes, weights="int8 symmetric per-channel (nn.Linear)",
                      activations="int8 dynamic per-token", int8=census)
    try:
        program = export_graph(quantized, qi.example, "dynamic")
        fp32_mb = program_size_mb(model.eval(), qi.example, "dynamic")
    except ExportError:
        notes.append("torch.export cannot capture this model: saved as a state dict (model.pt)")
        qm = QuantizedModel("dynamic", "torch", module=quantized, meta=meta)
        return save_state_dict(qm, qi.out, _state_mb(model))
    qm = QuantizedModel("dynamic", "torch", module=quantized, program=program, meta=meta)
    return save_torch_quantized(qm, qi.out, fp32_mb)


def _state_mb(model: nn.Module) -> float:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return len(buf.getvalue()) / 1e6


def save_state_dict(qm: QuantizedModel, out: Path | None, fp32_mb: float) -> QuantizedModel:
    """Write the quantized state dict (`model.pt`, torchao subclasses inside) and meta.json atomically."""
    buf = io.BytesIO()
    torch.save(qm.module.state_dict(), buf)
    if out is not None:
        write_bytes(Path(out) / "model.pt", buf.getvalue())
        qm.path = Path(out) / "model.pt"
    finish_meta(qm, len(buf.getvalue()) / 1e6, fp32_mb)
    return qm
