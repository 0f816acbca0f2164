"""Quality of a quantized student against its fp32 self: metric, retention, agreement, size, int8 share."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from compress.core.atomic import write_json
from compress.core.tasks import Task, retention
from compress.data.loader import collect_outputs
from compress.quant.configs import QuantizedModel


def evaluate_quantized(qm: QuantizedModel, fp32_model: nn.Module, val_loader: Iterable,
                       preprocess: Callable | None, task: Task, write: bool = True) -> dict[str, Any]:
    """Metric on validation, retention and top-1 agreement vs the fp32 student, size and int8 share.

    Args:
        qm: the quantized model (from `quantize`).
        fp32_model: the fp32 student it was made from.
        val_loader: validation batches (raw, target, index).
        preprocess: raw batch → student input.
        task: defines metrics, the primary metric and agreement.
        write: also write `metrics.json` beside the saved model (atomically).

    Returns:
        A JSON-ready dict. CoreML models cannot run on Linux: their status is "not verified on this OS"
        and the metric fields are None.
    """
    fp32_model.eval()
    ref, targets = collect_outputs(fp32_model, val_loader, preprocess)
    fp32_metrics = task.metrics(ref, targets)
    primary = task.primary_metric
    result: dict[str, Any] = {"mode": qm.mode, "backend": qm.backend, "primary_metric": primary,
                              "fp32_metrics": fp32_metrics, "size_mb": qm.meta.get("size_mb"),
                              "fp32_size_mb": qm.meta.get("fp32_size_mb"),
                              "compression": qm.meta.get("compression"),
                              "quantized_share": qm.meta.get("int8", {}).get("quantized_share")}
    if qm.module is None and qm.backend == "coreml":
        result.update(status="not verified on this OS", metrics=None, retention=None, agreement=None,
                      cosine=None)
    else:
        outs, _ = collect_outputs(qm, val_loader, preprocess)
        metrics = task.metrics(outs, targets)
        cosine = torch.nn.functional.cosine_similarity(outs.flatten(), ref.flatten(), dim=0)
        result.update(status="ok", metrics=metrics,
                      retention=retention(primary, metrics[primary], fp32_metrics[primary]),
                      agreement=task.agreement(outs, ref), cosine=float(cosine))
    if write and qm.path is not None:
        write_json(qm.path.parent / "metrics.json", result)
    return result
