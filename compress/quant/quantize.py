"""INT8 quantization of the student: one verb, one config dataclass per technique (torchao style).

    import export.formats  # registers the formats' own int8 writers (backend onnx, coreml)
    from compress.quant.quantize import quantize, Int8StaticConfig
    qm = quantize(student, Int8StaticConfig(backend="onnx", calibration_samples=256),
                  calibration=train_loader, preprocess=built.preprocess, out="runs/r/quantized/static/onnx")

`quantize` dispatches on the config's type to the mode registered in `QUANT_MODES` under the recipe's
names ("dynamic", "static", "qat"); each mode dispatches on `config.backend`. Model-level
implementations live in `compress/quant/`; a file format's own int8 (ONNX Runtime, CoreML) lives in
its folder, `export/formats/<name>/int8.py`, reached through `compress.quant.formats.FILE_INT8`.
A quantized model carries provenance (`meta.json`, written atomically beside it) and never a speed:
speed comes from the benchmark.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from compress.core.errors import KdtoolError
from compress.core.registry import Registry
from compress.quant.configs import (
    Int8DynamicConfig,
    Int8QATConfig,
    Int8StaticConfig,
    LossFn,
    QuantConfig,
    QuantInputs,
    QuantizedModel,
)
from compress.quant.dynamic import quantize_dynamic
from compress.quant.evaluate import evaluate_quantized
from compress.quant.formats import file_int8
from compress.quant.qat import qat_distill, quantize_qat
from compress.quant.static import quantize_static

if TYPE_CHECKING:
    from compress.distill.objective import KDObjective

__all__ = ["QUANT_MODES", "Int8DynamicConfig", "Int8QATConfig", "Int8StaticConfig", "QuantizedModel",
           "evaluate_quantized", "load_quantized", "make_config", "qat_distill", "quantize"]

QUANT_MODES: Registry[Callable[[nn.Module, Any, QuantInputs], QuantizedModel]] = Registry("quantization mode")
QUANT_MODES.register("dynamic", "int8 weights, activations quantized per batch (torchao / XNNPACK / ORT)")(
    quantize_dynamic)
QUANT_MODES.register("static", "post-training int8 calibrated on training samples (PT2E / ORT QDQ / CoreML)")(
    quantize_static)
QUANT_MODES.register("qat", "quantization-aware fine-tuning with the teacher's KD loss (PT2E QAT)")(
    quantize_qat)

CONFIGS: dict[str, type] = {"dynamic": Int8DynamicConfig, "static": Int8StaticConfig, "qat": Int8QATConfig}


def quantize(model: nn.Module, config: QuantConfig, *, example: torch.Tensor | None = None,
             calibration: Any = None, preprocess: Callable | None = None, out: str | Path | None = None,
             seed: int = 0, teacher: nn.Module | None = None, teacher_preprocess: Callable | None = None,
             task: Any = None, loss_fn: LossFn | None = None, objective: KDObjective | None = None) -> QuantizedModel:
    """Quantize `model` to int8 with the technique `config` names.

    Args:
        model: the fp32 student (left unmodified).
        config: `Int8DynamicConfig`, `Int8StaticConfig` or `Int8QATConfig` (its type picks the mode).
        example: one preprocessed input batch (N >= 2); default: the first 2 calibration samples.
        calibration: loader of (raw, target, index): calibration samples (static) or training data (qat).
        preprocess: raw batch → the student's input.
        out: folder for the model file and meta.json (required for the onnx and coreml backends).
        seed: recorded in the meta; seeds QAT.
        teacher: QAT only: teacher for quantization-aware distillation.
        teacher_preprocess: QAT only: raw batch → the teacher's input.
        task: QAT only: a `compress.core.tasks.Task`.
        loss_fn: QAT only: `loss_fn(student_out, teacher_out, targets) -> scalar` (default: hard loss).
        objective: QAT only: the distillation stage's `KDObjective`, used instead of `loss_fn` so QAT
            trains on the same loss, feature/attention terms and their adapters included.

    Returns:
        The `QuantizedModel` (module and/or file, with `meta`).

    Raises:
        KdtoolError: unknown backend for the mode (exit 2). ExportError: the model cannot be captured or
            nothing was quantized (exit 4); the message names a mode or backend that works.
    """
    mode = getattr(config, "mode", None)
    if mode not in QUANT_MODES:
        raise KdtoolError(f"quantize: {type(config).__name__} is not a quantization config",
                          "use Int8DynamicConfig, Int8StaticConfig or Int8QATConfig")
    _check_backend(config)
    if example is None:
        if calibration is None:
            raise KdtoolError(f"quantize {mode}: give `example` (an input batch) or `calibration`",
                              "pass example=preprocess(raw_batch)")
        raw = next(iter(calibration))
        raw = raw[0] if isinstance(raw, list | tuple) else raw
        example = preprocess(raw[:2]) if preprocess is not None else raw[:2]
    inputs = QuantInputs(example=example, calibration=calibration, preprocess=preprocess,
                         out=Path(out) if out is not None else None, seed=seed, teacher=teacher,
                         teacher_preprocess=teacher_preprocess, task=task, loss_fn=loss_fn,
                         objective=objective)
    return QUANT_MODES.get(mode)(model, config, inputs)


def _check_backend(config: QuantConfig) -> None:
    """A model-level backend of the mode, or a file format registered in `FILE_INT8` that writes it."""
    if config.backend not in config.backends:
        file_int8(config)


def make_config(mode: str, **settings: Any) -> QuantConfig:
    """The config dataclass for a recipe mode name ("dynamic", "static", "qat"), unknown settings named."""
    QUANT_MODES.get(mode)
    cls = CONFIGS[mode]
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(settings) - known)
    if unknown:
        raise KdtoolError(f"quantize {mode}: unknown setting {unknown[0]!r}",
                          f"known: {', '.join(sorted(known))}")
    return cls(**settings)


def load_quantized(folder: str | Path) -> QuantizedModel:
    """Reload a saved quantized model from its folder (meta.json + model.pt2 / .int8.onnx / .mlpackage)."""
    from compress.core.atomic import read_json

    folder = Path(folder)
    meta = read_json(folder / "meta.json")
    path = folder / meta["file"]
    if not path.exists():
        raise KdtoolError(f"{path} named by {folder / 'meta.json'} is missing", "rerun `kdtool quantize`")
    qm = QuantizedModel(meta["mode"], meta["backend"], path=path, meta=meta)
    if path.suffix == ".pt2":
        import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401  (registers quantized_decomposed ops)

        qm.program = torch.export.load(str(path))
        qm.module = qm.program.module()
    return qm
