"""Small typed values that cross the export → benchmark boundary (JSON in the run folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

ParityStatus = Literal["passed", "failed", "not verified on this OS", "not verified"]


class Parity(BaseModel):
    """How closely an artifact's outputs match the PyTorch model's on the same inputs."""

    model_config = ConfigDict(frozen=True)

    status: ParityStatus
    max_abs: float | None = None
    max_rel: float | None = None
    agreement: float | None = None
    atol: float | None = None
    batches: list[int] = []
    samples: int = 0
    metric_delta: float | None = None  # artifact − fp32 student primary metric on labelled samples (worst batch)
    fp32_agreement: float | None = None  # int8 checked against its PT2E model: agreement with the fp32 student
    failed: list[str] = []  # the criteria that failed (max_abs, agreement, positives, class_agreement, metric, ...)
    reason: str | None = None


class Artifact(BaseModel):
    """One exported file (or folder, e.g. `.mlpackage`) and the facts a runtime needs to load it."""

    model_config = ConfigDict(frozen=True)

    name: str  # e.g. "student_kd.executorch.int8"
    format: Literal["pytorch", "torchscript", "onnx", "coreml", "executorch", "tensorrt", "aoti", "litert",
                    "openvino"]
    precision: Literal["fp32", "fp16", "int8"]
    path: Path  # the main file; extra files (ONNX .data) listed in `files`
    files: list[Path] = []
    runtime: str  # registered runtime name that loads it: torch, torchscript, onnxruntime, executorch, coreml, ...
    target: str | None = None
    status: Literal["ok", "failed", "skipped"] = "ok"
    reason: str | None = None
    size_mb: float | None = None
    sha256: str | None = None
    parity: Parity | None = None
    info: dict[str, Any] = {}  # delegation share, quantized-op share, opset, export seconds, ...
