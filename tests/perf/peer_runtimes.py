"""Plain LiteRT and OpenVINO peers for `tests.perf.peers`: each library's documented calls, as a user
writes them without kdtool (static batch 1; int8 calibrated on the study's calibration images).

- LiteRT fp32: `litert_torch.convert(model, (x1,))`; int8: litert-torch's `PT2EQuantizer`
  (per-channel, static) → `prepare_pt2e` → calibrate → `convert_pt2e` → `litert_torch.convert(...,
  quant_config=QuantConfig(pt2e_quantizer=...))`. Run with `Interpreter(num_threads=threads)`,
  XNNPACK applied by default; an int8 input is quantized with its own scale and zero point.
- OpenVINO fp32: `openvino.convert_model(torch.export.export(model, (x1,)))` saved with fp32
  weights; int8: `nncf.quantize` on the calibration images. Compiled with `INFERENCE_NUM_THREADS`
  and the latency hint only: the plugin then picks its default inference precision (bf16 on CPUs
  with AMX or AVX-512 BF16), which the row's note names.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

Runner = Callable[[np.ndarray], object]


def litert_files(model: torch.nn.Module, x1: torch.Tensor, calib: torch.Tensor, out: Path) -> dict[str, Path]:
    """`LiteRT fp32` and `LiteRT int8` peer files."""
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    import litert_torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    files = {"LiteRT fp32": out / "peer.fp32.tflite", "LiteRT int8": out / "peer.int8.tflite"}
    litert_torch.convert(model.eval(), (x1,)).export(str(files["LiteRT fp32"]))
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    prepared = prepare_pt2e(torch.export.export(model, (x1,)).module(), quantizer)
    with torch.no_grad():
        for x in calib.split(1):
            prepared(x)
    converted = convert_pt2e(prepared, fold_quantize=False)
    litert_torch.convert(converted, (x1,), quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(
        str(files["LiteRT int8"]))
    return files


def openvino_files(model: torch.nn.Module, x1: torch.Tensor, calib: torch.Tensor, out: Path) -> dict[str, Path]:
    """`OpenVINO fp32` and `OpenVINO int8` peer files (IR `.xml` + `.bin`); telemetry off, as in kdtool
    (`export.formats.openvino.offline`: it changes what is sent, not what is made)."""
    from export.formats.openvino.offline import no_telemetry

    files = {"OpenVINO fp32": out / "peer.fp32.xml", "OpenVINO int8": out / "peer.int8.xml"}
    with no_telemetry():
        import nncf
        import openvino as ov

        ov_model = ov.convert_model(torch.export.export(model, (x1,)))
        ov.save_model(ov_model, str(files["OpenVINO fp32"]), compress_to_fp16=False)
        quantized = nncf.quantize(ov_model, nncf.Dataset([x.numpy() for x in calib.split(1)]),
                                  subset_size=len(calib))
        ov.save_model(quantized, str(files["OpenVINO int8"]), compress_to_fp16=False)
    return files


def litert_runner(path: Path, threads: int) -> Runner:
    """The plain interpreter: set the input (quantized when int8), invoke, read the output."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def run(x: np.ndarray) -> object:
        if inp["dtype"] == np.int8:
            scale, zero = inp["quantization"]
            x = np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"])

    return run


def openvino_runner(path: Path, threads: int) -> tuple[Runner, str]:
    """The plain compiled model (threads and latency hint set, default precision) and that precision."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                          "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    return (lambda x: request.infer([x])), str(compiled.get_property("INFERENCE_PRECISION_HINT"))
