"""ONNX Runtime int8 of the onnx format: `quantize_dynamic`; `quant_pre_process` + `quantize_static` (QDQ).

Registered in `compress.quant.formats.FILE_INT8` as backend `onnx`: the quantize stage reaches it
there (it sits below `export` and never imports it). The fp32 student is exported once
(`torch.onnx.export(dynamo=True)`, weights inlined, dynamic batch) to `model.fp32.onnx` beside the
int8 file, so sizes compare like with like: both finished files get short tensor ids
(`compact_names`), the exporter's debug metadata is stripped from both.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.core.atomic import atomic_path, size_on_disk_mb
from compress.core.errors import ExportError, KdtoolError
from compress.core.onnxrt import ort_session
from compress.quant.common import finish_meta, input_batches, kept_float_modules, provenance, require_quantized
from compress.quant.configs import Int8DynamicConfig, Int8StaticConfig, QuantConfig, QuantInputs, QuantizedModel
from compress.quant.formats import FILE_INT8
from export.formats.onnx.clean import (
    SCOPES_KEY,
    compact_file,
    nodes_of_modules,
    shield_float_layers,
    strip_debug_metadata,
)

INPUT_NAME = "input"


def export_fp32_onnx(model: nn.Module, example: torch.Tensor, out: Path) -> Path:
    """Export the fp32 model to `out/model.fp32.onnx` (weights inlined, dynamic batch) atomically.

    Each node keeps its module scope (`SCOPES_KEY`) so `nodes_of_modules` finds every node of a
    module kept in float; `compact_file` drops it from the finished files.
    """
    path = Path(out) / "model.fp32.onnx"
    with atomic_path(path) as tmp:
        try:
            program = torch.onnx.export(copy.deepcopy(model).eval(), (example,), dynamo=True,
                                        input_names=[INPUT_NAME], output_names=["output"], verbose=False,
                                        dynamic_shapes=({0: torch.export.Dim.AUTO},))
            strip_debug_metadata(program.model, keep=(SCOPES_KEY,))
            program.save(str(tmp), external_data=False)
        except Exception as e:  # torch.onnx wraps many error types
            raise ExportError(f"quantize (onnx): torch.onnx.export failed ({type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''})",
                              "use backend executorch or torch, or fix the unsupported op") from e
    return path


def int8_census_onnx(path: Path) -> dict[str, Any]:
    """Count int8/uint8 initializers of rank >= 2 and the share of weight elements they hold."""
    import numpy as np
    import onnx

    model = onnx.load(str(path))
    int8_types = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    int8_tensors = int8_elems = float_elems = 0
    for init in model.graph.initializer:
        if len(init.dims) < 2:
            continue
        n = int(np.prod(init.dims))
        if init.data_type in int8_types:
            int8_tensors, int8_elems = int8_tensors + 1, int8_elems + n
        elif init.data_type in float_types:
            float_elems += n
    total = int8_elems + float_elems
    return {"int8_tensors": int8_tensors, "int8_weight_elements": int8_elems,
            "float_weight_elements": float_elems,
            "quantized_share": round(int8_elems / total, 4) if total else 0.0}


def _need_out(qi: QuantInputs, mode: str) -> Path:
    if qi.out is None:
        raise KdtoolError(f"quantize {mode} (onnx): no output folder given",
                          "pass out=<folder> for file backends")
    return Path(qi.out)


def _finish(config: QuantConfig, qi: QuantInputs, fp32: Path, int8: Path, calibrated: int | None, notes: list[str],
            activations: str) -> QuantizedModel:
    census = int8_census_onnx(int8)
    require_quantized(census, config.mode, "onnx", "backend executorch (PT2E)")
    ort_session(int8)  # fail here, not at benchmark time, if ORT cannot load what it wrote
    with atomic_path(fp32) as tmp:  # short ids like the int8 file: the size ratio compares like with like
        compact_file(fp32, tmp)
    meta = provenance(config, qi.seed, calibrated, ("onnx", "onnxruntime"), notes,
                      weights="int8 symmetric per-channel", activations=activations, int8=census,
                      fp32_file=fp32.name)
    qm = QuantizedModel(config.mode, "onnx", path=int8, meta=meta)
    finish_meta(qm, size_on_disk_mb(int8), size_on_disk_mb(fp32))
    return qm


def ort_dynamic(model: nn.Module, config: Int8DynamicConfig, qi: QuantInputs) -> QuantizedModel:
    """`onnxruntime.quantization.quantize_dynamic` (int8 per-channel weights; MatMul/Gemm and Conv).

    Modules that declare `keep_float_in_int8` stay float here too: dynamic int8 of the log-mel
    front end's DFT Conv and mel MatMul would quantize the waveform and the power spectrum.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = _need_out(qi, "dynamic")
    fp32 = export_fp32_onnx(model, qi.example, out)
    int8 = out / "model.int8.onnx"
    kept = kept_float_modules(model)
    notes = [f"kept in float: {', '.join(kept)}"] if kept else []
    with atomic_path(int8) as tmp:
        quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                         nodes_to_exclude=nodes_of_modules(fp32, kept))
        compact_file(tmp)
    return _finish(config, qi, fp32, int8, None, notes, "uint8 dynamic (ConvInteger/MatMulInteger)")


CHUNK_SAMPLES = 32
"""Calibration samples ONNX Runtime collects activations for at a time (`_Reader.stride`)."""


class _Reader:
    """ORT CalibrationDataReader over preprocessed batches (mixed in lazily: ORT imports stay local).

    ONNX Runtime's histogram calibrator keeps every activation of every sample it is given in memory
    before it bins them: 512 samples of MobileNetV3-Large at 224 px took over 24 GB and the process was
    killed. Given `CalibStridedMinMax` (any calibrator, despite the name), `quantize_static` hands it
    `stride` batches at a time through `set_range` and it merges the chunks' histograms (min-max
    ranges merge exactly). The inputs themselves are kept: small beside the activations.
    """

    def __init__(self, batches) -> None:
        self.batches = [x.detach().float().cpu().numpy() for x in batches]
        self.samples = sum(len(x) for x in self.batches)
        self.next, self.end = 0, len(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    @property
    def stride(self) -> int:
        """Batches per chunk: the most that hold at most `CHUNK_SAMPLES` samples and divide the batches
        evenly (ONNX Runtime requires it)."""
        most = max(1, CHUNK_SAMPLES // max(1, len(self.batches[0]))) if self.batches else 1
        return max(k for k in range(1, most + 1) if len(self) % k == 0) if self.batches else 1

    def set_range(self, start_index: int, end_index: int) -> None:
        self.next, self.end = start_index, min(end_index, len(self.batches))

    def get_next(self) -> dict | None:
        if self.next >= self.end:
            return None
        self.next += 1
        return {INPUT_NAME: self.batches[self.next - 1]}


def ort_static(model: nn.Module, config: Int8StaticConfig, qi: QuantInputs) -> QuantizedModel:
    """`quant_pre_process` + `quantize_static`: QDQ format, per-channel int8 weights, calibrated activations.

    Activations are uint8 with 7-bit weights (U8S8, the default) or int8 (S8S8): see
    `Int8StaticConfig.onnx_activations` for why and what was measured.

    Biases stay float32 (`QuantizeBias: False`). Quantized, each bias became an int32 tensor plus a
    float32 per-channel scale, twice its float bytes (92 kB more on a trained MobileViTv2-050), and
    bought nothing: ONNX Runtime fuses the same QLinearConv nodes either way (it quantizes the
    bias itself at load; measured: same fused graph, same latency). PT2E's XNNPACK config keeps
    biases float too.
    """
    if qi.calibration is None:
        raise KdtoolError("quantize static (onnx): no calibration data given",
                          "pass calibration=<training loader>")
    out = _need_out(qi, "static")
    fp32 = export_fp32_onnx(model, qi.example, out)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(dir=out, prefix=".prep.") as scratch:
        source = pre_process(fp32, Path(scratch), notes)
        int8 = out / "model.int8.onnx"
        if config.float_modules:
            notes.append(f"kept in float: {', '.join(config.float_modules)}")
        with atomic_path(int8) as tmp:
            samples = ort_quantize_file(source, tmp, config,
                                        input_batches(qi.calibration, qi.preprocess, config.calibration_samples))
            compact_file(tmp)
    if samples < config.calibration_samples:
        notes.append(f"only {samples} calibration samples (asked {config.calibration_samples})")
    activations = ("uint8 asymmetric static (QDQ, U8S8; weights 7-bit)" if config.onnx_activations == "uint8"
                   else "int8 symmetric static (QDQ, S8S8)")
    return _finish(config, qi, fp32, int8, samples, notes, activations)


def pre_process(fp32: Path, scratch: Path, notes: list[str]) -> Path:
    """`quant_pre_process` (shape inference, graph optimisation) into `scratch`; the raw export if it fails.

    ORT's optimiser drops node metadata but keeps the names of the nodes it does not rewrite, so the
    module scopes of the raw export are copied back onto those nodes by name.
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prep = scratch / "model.prep.onnx"
    try:
        quant_pre_process(str(fp32), str(prep))
    except Exception as e:  # symbolic shape inference fails on some graphs; quantizing still works
        notes.append(f"quant_pre_process skipped ({type(e).__name__}); quantized the raw export")
        return fp32
    scopes = {n.name: p.value for n in onnx.load(str(fp32), load_external_data=False).graph.node
              for p in n.metadata_props if p.key == SCOPES_KEY and n.name}
    if scopes:
        proto = onnx.load(str(prep))
        for node in proto.graph.node:
            if node.name in scopes and not any(p.key == SCOPES_KEY for p in node.metadata_props):
                node.metadata_props.add(key=SCOPES_KEY, value=scopes[node.name])
        onnx.save(proto, str(prep))
    return prep


def ort_quantize_file(source: Path, dest: Path, config: Int8StaticConfig, batches,
                      only_modules: tuple[str, ...] = ()) -> int:
    """`quantize_static` of `source` into `dest` (QDQ), `config.float_modules` left float; samples used.

    `only_modules`: quantize the nodes of these modules alone (`nodes_to_quantize`).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    only = nodes_of_modules(source, only_modules)
    if only_modules and not only:  # none of these modules has an ONNX node: nothing to quantize
        Path(dest).write_bytes(Path(source).read_bytes())
        return 0
    reader = type("CalibrationReader", (_Reader, CalibrationDataReader), {})(batches)
    unsigned = config.onnx_activations == "uint8"
    quantize_static(str(source), str(dest), reader, quant_format=QuantFormat.QDQ,
                    per_channel=config.per_channel,
                    activation_type=QuantType.QUInt8 if unsigned else QuantType.QInt8,
                    weight_type=QuantType.QInt8, reduce_range=unsigned,
                    calibrate_method=_ort_calibration(config.calibration_method),
                    nodes_to_exclude=nodes_of_modules(source, config.float_modules),
                    nodes_to_quantize=only or None,
                    # int8 activations symmetric (zero point 0): TensorRT's Q/DQ import takes no other
                    extra_options={"QuantizeBias": False, "ActivationSymmetric": not unsigned,
                                   **({"CalibStridedMinMax": reader.stride} if len(reader) else {})})
    if unsigned:
        shield_float_layers(dest)
    return reader.samples


def _ort_calibration(method: str | None):
    """ONNX Runtime's calibration method for `Int8StaticConfig.calibration_method` (None: min-max)."""
    from onnxruntime.quantization import CalibrationMethod

    return CalibrationMethod.Percentile if method == "histogram" else CalibrationMethod.MinMax




class OnnxInt8:
    """ONNX Runtime QDQ int8 (static, calibrated) and `quantize_dynamic` of the onnx format."""

    modes = ("dynamic", "static")
    targets = None  # made on every run: the server's onnx int8 adopts the static file
    searchable = True  # `nodes_to_exclude` keeps named modules float
    refusals: dict[str, tuple[str, str]] = {}

    def quantize(self, model: nn.Module, config: QuantConfig, qi: QuantInputs) -> QuantizedModel:
        """`ort_static` or `ort_dynamic`, by the config's mode."""
        return ort_static(model, config, qi) if config.mode == "static" else ort_dynamic(model, config, qi)

    def trials(self, model: nn.Module, config: Int8StaticConfig, qi: QuantInputs, batches: list[torch.Tensor],
               scratch: Path) -> Callable[..., QuantizedModel]:
        """Trial int8 files quantized from one pre-processed fp32 export (see `FileInt8.trials`)."""
        source = pre_process(export_fp32_onnx(model, qi.example, scratch), scratch, [])
        count = iter(range(1 << 30))

        def ort_trial(extra: tuple[str, ...] = (), only: tuple[str, ...] = ()) -> QuantizedModel:
            trial_config = dataclasses.replace(config, float_modules=(*config.float_modules, *extra))
            path = scratch / f"trial{next(count)}.onnx"
            ort_quantize_file(source, path, trial_config, iter(batches), only)
            return QuantizedModel("static", "onnx", path=path)

        return ort_trial


FILE_INT8.register("onnx", "ONNX Runtime int8: static QDQ (calibrated) and dynamic")(OnnxInt8())
