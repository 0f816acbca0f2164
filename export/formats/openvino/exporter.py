"""OpenVINO IR (`.xml` graph + `.bin` weights) via `openvino.convert_model` from the ExportedProgram.

- fp32: `torch.export` (dynamic batch unless the job fixes it) → `openvino.convert_model` → the
  input reshaped to the example's shape with the batch left dynamic (-1) or fixed →
  `openvino.save_model(compress_to_fp16=False)`: save_model would otherwise store fp16 weights.
- int8: NNCF post-training quantization of that model (`quantizer.py`), calibrated on the
  quantization stage's calibration samples; with `quantize.min_retention` set, NNCF's
  accuracy-control variant keeps layers float until the metric holds.

Metadata goes into the model's `rt_info` under `kdtool` (saved in the `.xml`); `read_metadata`
reads it back. The size counts both files; the `.bin` is listed in `Artifact.files`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.core.errors import ExportError
from export.artifact import Artifact
from export.extras import missing_extra
from export.formats.openvino.offline import import_openvino, no_telemetry
from export.formats.openvino.runtime import RT_INFO_KEY, compile_cpu, float_precision, last_line
from export.registry import EXPORTERS, ExportContext, build_artifact, check_precision, export_program


def unavailable_reason(precision: str = "fp32") -> str | None:
    """None when openvino (and, for int8, nncf) are installed, else the reason with the install hint."""
    packages = ("openvino", "nncf") if precision == "int8" else ("openvino",)
    return missing_extra("openvino", packages, "OpenVINO export")


@EXPORTERS.register("openvino")
class OpenVINOExporter:
    """OpenVINO IR (CPU plugin, latency hint): Intel x86 servers."""

    name = "openvino"
    runtime = "openvino"
    precisions = ("fp32", "int8")
    calibrates_int8 = True  # its int8 is calibrated by the exporter on `spec.calibration`
    unavailable = staticmethod(unavailable_reason)

    def export(self, model: nn.Module, example: torch.Tensor, out_dir: Path, spec: ExportContext) -> Artifact:
        """Write `<name>.<precision>.xml` and `.bin`, metadata in rt_info."""
        check_precision(self, spec)
        reason = unavailable_reason(spec.precision)
        if reason:
            raise ExportError(reason, "or pick another format for server: onnx, torchscript")
        ov_model = convert(model, example, spec)
        info: dict[str, Any] = {}
        if spec.precision == "int8":
            from export.formats.openvino.quantizer import quantize_nncf

            with no_telemetry():
                ov_model, info["int8"] = quantize_nncf(ov_model, example, spec)
        for key, value in spec.embedded_metadata().items():
            ov_model.set_rt_info(value, [RT_INFO_KEY, key])
        xml, weights = save(ov_model, Path(out_dir) / f"{spec.name}.{spec.precision}.xml")
        if spec.precision == "int8":
            info["quantized"] = quantized_share(xml)
        return build_artifact(self.name, xml, spec, self.runtime, (weights,), info)


def convert(model: nn.Module, example: torch.Tensor, spec: ExportContext) -> Any:
    """The `openvino.Model` of `model`, its input shaped like `example` (batch -1 when dynamic)."""
    ov = import_openvino()

    program = export_program(model.eval(), example, spec)
    try:
        with no_telemetry():
            ov_model = ov.convert_model(program)
    except Exception as e:  # OpConversionFailure: its first line names a C++ file, its last the ops
        raise ExportError(f"openvino.convert_model failed for {spec.name}: {last_line(e).lstrip('- ')}",
                          "an op has no OpenVINO translation: use onnx for this model") from e
    shape = [-1 if spec.dynamic_batch else int(example.shape[0]), *map(int, example.shape[1:])]
    ov_model.reshape({ov_model.inputs[0]: ov.PartialShape(shape)})
    return ov_model


def save(ov_model: Any, xml: Path) -> tuple[Path, Path]:
    """Save fp32-weighted IR into a private folder, then move the `.bin` first and the `.xml` last: a
    reader never sees an `.xml` without its weights. Returns (xml, bin)."""
    ov = import_openvino()

    build = Path(tempfile.mkdtemp(prefix=f".{xml.name}.", dir=xml.parent))
    try:
        ov.save_model(ov_model, str(build / xml.name), compress_to_fp16=False)
        weights = xml.with_suffix(".bin")
        os.replace(build / weights.name, weights)
        os.replace(build / xml.name, xml)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return xml, weights


def read_metadata(path: Path) -> dict[str, str]:
    """The `kdtool` rt_info entries of an `.xml` written by this exporter."""
    ov = import_openvino()

    model = ov.Core().read_model(str(path))
    if RT_INFO_KEY not in model.get_rt_info().keys():
        return {}
    entries = model.get_rt_info()[RT_INFO_KEY]  # a dict of OVAny values
    return {key: value.astype(str) for key, value in entries.items()}


COMPUTE_LAYERS = ("Convolution", "GroupConvolution", "FullyConnected", "MatMul", "Deconvolution")
"""Layer types of the CPU plugin's execution graph that hold a model's multiply-adds."""


def quantized_share(xml: Path) -> dict[str, Any]:
    """How many compute layers the CPU plugin really runs in int8 (its execution graph's precisions), and
    the precision it runs the float layers in on this CPU (`float_layers`: bf16 with AMX or AVX-512 BF16)."""
    compiled = compile_cpu(xml, 1, "int8")
    layers = [op.get_rt_info() for op in compiled.get_runtime_model().get_ordered_ops()]
    compute = [rt for rt in layers if rt["layerType"].astype(str) in COMPUTE_LAYERS]
    int8 = [rt for rt in compute if rt["runtimePrecision"].astype(str) in ("i8", "u8")]
    return {"compute_ops": len(compute), "int8_compute_ops": len(int8),
            "op_share": round(len(int8) / len(compute), 4) if compute else 0.0,
            "float_layers": float_precision(compiled)}
