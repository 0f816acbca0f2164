"""OpenVINO int8: NNCF post-training quantization of the `openvino.Model`.

- `nncf.quantize`: activation ranges from the quantization stage's calibration samples (all of
  them, in batches of the artifact's batch: NNCF's `subset_size` counts dataset items, here
  batches, so it is the number of batches), per-channel int8 weights, CPU target.
- With `quantize.min_retention` set and labelled validation samples given (`spec.validation`):
  `nncf.quantize_with_accuracy_control`, which ranks the quantized layers by their effect on the
  task's primary metric and reverts them to float until the int8 model keeps `min_retention` of
  the fp32 model's metric on those samples (an absolute drop bound computed from it).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from compress.core.errors import ExportError
from compress.core.tasks import lower_is_better
from export.calibration import fixed_batches
from export.registry import ExportContext, first_line

VALIDATION_BATCH = 16


def quantize_nncf(ov_model: Any, example: torch.Tensor, spec: ExportContext) -> tuple[Any, dict[str, Any]]:
    """The int8 `openvino.Model` and what was done (method, samples, metric before/after).

    Raises:
        ExportError: no calibration samples, or NNCF failed (its first line).
    """
    import nncf

    from compress.core.native import debug

    if not debug():  # NNCF logs each step at INFO; its progress bars stay
        logging.getLogger("nncf").setLevel(logging.WARNING)
    if spec.calibration is None or len(spec.calibration) == 0:
        raise ExportError("openvino int8 needs calibration samples (Quantized.calibration)",
                          "export from a recipe run (kdtool export), or pass Quantized(calibration=...)")
    batch = 1 if spec.dynamic_batch else int(example.shape[0])
    samples = [b.numpy() for b in fixed_batches(spec.calibration, batch)]
    calibration = nncf.Dataset(samples)
    info: dict[str, Any] = {"method": "nncf.quantize", "calibration_samples": len(spec.calibration)}
    try:
        if spec.min_retention is not None and spec.validation is not None and spec.task_spec is not None:
            quantized = _with_accuracy_control(ov_model, calibration, len(samples), batch, spec, info)
            if quantized is not None:
                return quantized, info
        return nncf.quantize(ov_model, calibration, subset_size=len(samples),
                             target_device=nncf.TargetDevice.CPU), info
    except ExportError:
        raise
    except Exception as e:  # NNCF raises many types
        raise ExportError(f"NNCF int8 failed for {spec.name}: {first_line(e)}", "export openvino fp32") from e


def _with_accuracy_control(ov_model: Any, calibration: Any, subset: int, batch: int, spec: ExportContext,
                           info: dict[str, Any]) -> Any:
    """`nncf.quantize_with_accuracy_control` at the `min_retention` floor; None when the metric is undefined."""
    import nncf

    from export.formats.openvino.runtime import compile_cpu

    threads = torch.get_num_threads()
    task, metric = spec.task_spec, spec.task_spec.primary_metric
    sign = -1.0 if lower_is_better(metric) else 1.0  # NNCF maximises the value validate() returns
    x, y = spec.validation
    step = VALIDATION_BATCH if spec.dynamic_batch else batch
    items = [(xb.numpy(), yb) for xb, yb in zip(fixed_batches(x, step), torch.split(y, step), strict=True)]

    def validate(compiled: Any, data: Any) -> float:
        outs, targets = [], []
        for xb, yb in data:
            outs.append(torch.from_numpy(np.asarray(compiled(xb)[0], dtype=np.float32))[:len(yb)])
            targets.append(yb)
        value = task.metrics(torch.cat(outs), torch.cat(targets)).get(metric)
        return float("nan") if value is None else sign * float(value)

    fp32 = validate(compile_cpu(ov_model, threads, "fp32"), items)  # f32, as the fp32 artifact runs
    if not np.isfinite(fp32):
        info["accuracy_control"] = f"skipped: {metric} is undefined on the validation samples"
        return None
    r = float(spec.min_retention)
    value = abs(fp32)
    max_drop = value * (1.0 - r) if sign > 0 else value * (1.0 / r - 1.0)
    quantized = nncf.quantize_with_accuracy_control(
        ov_model, calibration, nncf.Dataset(items, lambda item: item[0]), validation_fn=validate,
        max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE, subset_size=subset,
        target_device=nncf.TargetDevice.CPU)
    after = validate(compile_cpu(quantized, threads, "int8"), items)  # as the int8 artifact runs
    info.update(method="nncf.quantize_with_accuracy_control", min_retention=r, metric=metric,
                validation_samples=int(len(y)), metric_fp32=round(sign * fp32, 6), metric_int8=round(sign * after, 6))
    note = below_floor(metric, sign * fp32, sign * after, r, sign)
    if note:
        info.update(below_floor=True, accuracy_control=note)
    return quantized


def below_floor(metric: str, fp32: float, int8: float, retention: float, sign: float) -> str | None:
    """Why the int8 metric misses the `min_retention` floor NNCF was asked to hold, or None when it holds.

    `sign` is 1 where higher is better; the floor is `retention` x fp32 (higher is better) or fp32 / `retention`.
    """
    if not np.isfinite(int8):
        return f"int8 {metric} is undefined on the validation samples"
    floor = fp32 * retention if sign > 0 else fp32 / retention
    if sign * (int8 - floor) >= -1e-9 * max(abs(floor), 1.0):  # at the floor, up to float rounding
        return None
    return (f"int8 {metric} {int8:.4g} is below the min_retention {retention:g} floor {floor:.4g} "
            f"(fp32 {fp32:.4g}): NNCF could not keep enough layers float to hold it")
