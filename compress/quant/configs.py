"""One config dataclass per quantization technique (torchao style): `quantize` dispatches on its type.

| config              | mode    | backends                    | weights             | activations            |
|---------------------|---------|-----------------------------|---------------------|------------------------|
| `Int8DynamicConfig` | dynamic | torch, executorch, onnx     | int8 per-channel    | int8, scale per batch  |
| `Int8StaticConfig`  | static  | executorch, onnx, coreml    | int8 per-channel    | int8 calibrated (¹)    |
| `Int8QATConfig`     | qat     | executorch                  | int8 per-channel    | int8 learned (QAT)     |

(¹) CoreML compresses weights only; its activations stay float.

Backends name where the quantized model runs: `torch` (torchao tensor subclasses, eager PyTorch) and
`executorch` (PT2E with the XNNPACK quantizer: the `.pt2` is what ExecuTorch lowers) are model-level
and live here (`backends`); `onnx` (ONNX Runtime's quantization tools) and `coreml` (coremltools
weight compression) are file formats whose int8 writer lives in their format folder and registers in
`compress.quant.formats.FILE_INT8`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn

from recipes.schema import TrainConfig

if TYPE_CHECKING:
    from compress.distill.objective import KDObjective

Backend = str
"""`torch`, `executorch` (model-level, `backends`) or a format registered in `compress.quant.formats.FILE_INT8`."""


@dataclass(frozen=True)
class Int8DynamicConfig:
    """Int8 weights; activations quantized on the fly per batch (no calibration data needed).

    Args:
        backend: `torch` (torchao `Int8DynamicActivationInt8WeightConfig`, nn.Linear only),
            `executorch` (XNNPACK quantizer, dynamic config: linear layers) or `onnx`
            (`onnxruntime.quantization.quantize_dynamic`: MatMul/Gemm and Conv).
    """

    mode: ClassVar[str] = "dynamic"
    backends: ClassVar[tuple[str, ...]] = ("torch", "executorch")  # model-level; file formats: FILE_INT8
    backend: Backend = "torch"


@dataclass(frozen=True)
class Int8StaticConfig:
    """Post-training static quantization: activation ranges calibrated on training samples.

    Args:
        backend: `executorch` (PT2E + XNNPACK quantizer), `onnx` (ORT QDQ) or `coreml`
            (weights only: CoreML has no calibrated activation int8 on this path).
        calibration_samples: how many training samples calibrate the activation ranges.
        per_channel: one weight scale per output channel (recommended for convolutions).
        palettize_bits: CoreML only: k-means palettization to this many bits instead of int8.
        onnx_activations: ONNX only: `uint8` (asymmetric activations, int8 weights at 7 bits: U8S8,
            the layout x86's VNNI instruction multiplies natively; 7-bit weights keep AVX2-only
            CPUs from saturating) or `int8` (symmetric S8S8, what TensorRT's Q/DQ import takes).
            Measured on a VNNI x86 CPU (quickstart student, batch 1): U8S8 0.097 ms, S8S8
            0.191 ms, fp32 0.158 ms, the same accuracy (0.9956).
        calibration_method: how activation ranges are read from the calibration samples: `histogram`
            (PT2E: `HistogramObserver`, the range minimising the L2 rounding+clipping error; ONNX
            Runtime: `CalibrationMethod.Percentile` at 99.999 %) or `minmax` (the observed extremes).
            None: each backend's own default (PT2E histogram, ONNX Runtime min-max).
        float_modules: module names (as in `model.named_modules()`, a block name covers its
            children) left in float: the layers the accuracy-aware step found most sensitive.
        min_retention: accuracy-aware floor, as a fraction of the fp32 student's primary metric on
            validation. When static PTQ falls below it, the quantization stage measures each layer's
            sensitivity and keeps the most sensitive ones in float until the floor holds
            (`compress.quant.accuracy.quantize_with_floor`, which `kdtool quantize` calls; `quantize`
            alone has no validation data and does not apply it). None: no floor.
    """

    mode: ClassVar[str] = "static"
    backends: ClassVar[tuple[str, ...]] = ("executorch",)  # model-level; file formats: FILE_INT8
    backend: Backend = "executorch"
    calibration_samples: int = 256
    per_channel: bool = True
    palettize_bits: int | None = None
    onnx_activations: Literal["uint8", "int8"] = "uint8"
    calibration_method: Literal["histogram", "minmax"] | None = None
    float_modules: tuple[str, ...] = ()
    min_retention: float | None = None


@dataclass(frozen=True)
class Int8QATConfig:
    """Quantization-aware training (PT2E QAT), fine-tuned with the teacher's KD loss when one is given.

    Args:
        backend: `executorch` (the XNNPACK quantizer's QAT config).
        epochs: fine-tuning epochs with fake quantization.
        lr: AdamW learning rate (small: the student is already trained).
        weight_decay: AdamW weight decay.
        per_channel: one weight scale per output channel.
        train: the rest of the training settings, read through the same `TrainStep` distillation uses:
            optimizer (`sam_rho`), `scheduler`, `grad_clip`, `amp`, `ema_decay` (the averaged
            weights are converted), `nan_policy`/`max_bad_steps`. None: AdamW at a constant lr.
            Its `epochs`, `lr` and `weight_decay` are replaced by the fields above.
        freeze_bn_epoch: from this epoch on, batch-norm statistics stop updating (None: never). The
            default 0 freezes them from the start: the student is already trained, and letting them
            move under fake quantization cost accuracy here (quickstart QAT 0.9911 vs 0.9933 frozen;
            a 2-epoch MobileViTv2-050, 0.811 vs 0.902). Weights and fake-quant ranges still train.
    """

    mode: ClassVar[str] = "qat"
    backends: ClassVar[tuple[str, ...]] = ("executorch",)
    backend: Backend = "executorch"
    epochs: int = 2
    lr: float = 1e-4
    weight_decay: float = 0.0
    per_channel: bool = True
    freeze_bn_epoch: int | None = 0
    train: TrainConfig | None = None


QuantConfig = Int8DynamicConfig | Int8StaticConfig | Int8QATConfig

LossFn = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]
"""`loss_fn(student_out, teacher_out, targets) -> scalar` (teacher_out is None without a teacher)."""


@dataclass(frozen=True)
class QuantInputs:
    """Everything a mode may need beside the model and its config (unused fields stay None).

    Args:
        example: one preprocessed input batch (N >= 2) used to trace/export the model.
        calibration: loader of (raw, target, index) batches (static calibration, QAT training).
        preprocess: raw batch → the student's input.
        out: folder the quantized model and its meta.json are written to.
        seed: recorded in the meta and used to seed QAT.
        teacher: QAT only: frozen teacher for quantization-aware distillation.
        teacher_preprocess: raw batch → the teacher's input.
        task: QAT only: the task (hard loss when no `loss_fn`).
        loss_fn: QAT only: `loss_fn(student_out, teacher_out, targets)`.
        objective: QAT only: the distillation `KDObjective` (every term, features included) instead
            of `loss_fn`.
    """

    example: torch.Tensor
    calibration: Any = None
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None
    out: Path | None = None
    seed: int = 0
    teacher: nn.Module | None = None
    teacher_preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None
    task: Any = None
    loss_fn: LossFn | None = None
    objective: KDObjective | None = None


@dataclass
class QuantizedModel:
    """A quantized student, where it runs, and its provenance.

    Attributes:
        mode: "dynamic" | "static" | "qat".
        backend: "torch" | "executorch" | "onnx" | "coreml".
        module: runnable in PyTorch (torchao model, or the converted PT2E graph), else None.
        program: the `torch.export` program saved as `.pt2` (torch/executorch backends), else None.
        path: the file written (`model.pt2`, `model.int8.onnx`, `model.mlpackage`), once saved.
        meta: provenance and facts (mode, backend, calibration size, seed, versions, size, int8 share).
        evaluation: metrics, retention and agreement vs the fp32 model on validation (`compress.quantize`
            with a val_loader), else None.
    """

    mode: str
    backend: str
    module: nn.Module | None = None
    program: Any = None
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None
    _session: Any = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Run one preprocessed batch; raises ExportError where this backend cannot run here (CoreML)."""
        if self.module is not None:
            with torch.no_grad():
                return self.module(x)
        if self.backend == "onnx" and self.path is not None:
            if self._session is None:
                from compress.core.onnxrt import ort_session

                self._session = ort_session(self.path)
            name = self._session.get_inputs()[0].name
            return torch.from_numpy(self._session.run(None, {name: x.detach().float().cpu().numpy()})[0])
        from compress.core.errors import ExportError

        raise ExportError(f"{self.backend} {self.mode} model {self.path} cannot run on this machine",
                          "CoreML prediction needs macOS; evaluate it there or use the onnx/executorch model")
