"""Calibration samples for the int8 quantizers that live in a format folder (LiteRT PT2E, OpenVINO NNCF).

They calibrate on the samples the quantization stage calibrates PT2E and ONNX Runtime on: the first
`quantize.calibration_samples` training samples, preprocessed (`export.stage` passes them in
`Quantized.calibration`).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def fixed_batches(samples: torch.Tensor, batch: int) -> Iterator[torch.Tensor]:
    """`samples` in batches of exactly `batch` rows (a static-batch graph takes no other size); the
    last batch is filled up with the first rows again."""
    filler = samples.repeat(-(-batch // len(samples)), *([1] * (samples.ndim - 1)))
    for start in range(0, len(samples), batch):
        chunk = samples[start:start + batch]
        yield chunk if len(chunk) == batch else torch.cat([chunk, filler[:batch - len(chunk)]])
