"""`quantize`: INT8 of a trained student from Python, evaluated on validation (`kdtool quantize` calls it too).

```python
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from compress import quantize

x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
loader = DataLoader(TensorDataset(x, y), batch_size=16)
student = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
q = quantize(student, loader, mode="dynamic", backend="onnx", val_loader=loader, task="multiclass")
assert q.evaluation["metrics"]["accuracy"] is not None and q.path.name.endswith(".onnx")
```
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.core.errors import KdtoolError
from compress.core.tasks import Task, as_task
from compress.data.batches import as_batches
from compress.models.build import BuiltModel, Preprocess, forward_checked
from compress.quant.configs import QuantizedModel
from recipes.schema import DistillConfig


def quantize(model: nn.Module, calib_loader: Iterable | None = None, mode: str = "static",
             backend: str | None = None, *, min_retention: float | None = None, teacher: nn.Module | None = None,
             val_loader: Iterable | None = None, task: Task | str | None = None, kd: DistillConfig | None = None,
             out_dir: str | Path | None = None, preprocess: Callable | None = None,
             teacher_preprocess: Callable | None = None, objective: Any = None, seed: int = 0,
             input_key: str = "input", label_key: str = "label", **settings: Any) -> QuantizedModel:
    """Quantize `model` to INT8 (`mode` dynamic, static or qat, for `backend`) and evaluate it on `val_loader`.

    Args:
        model: the trained fp32 student (left unmodified).
        calib_loader: calibration batches (static) or training batches (qat); dynamic needs none. Any
            DataLoader: tuples `(input, label, ...)`, dicts (`input_key`/`label_key`) or bare inputs.
        mode: "dynamic", "static" or "qat".
        backend: "onnx", "executorch", "torch" or "coreml" (default: the mode's first).
        min_retention: static only: keep the most sensitive layers in float until the int8 model keeps this
            fraction of the fp32 model's metric on `val_loader` (needs `val_loader`).
        teacher: qat only: the teacher whose soft labels guide quantization-aware training (`kd` sets the loss).
        val_loader: batches with labels to score the int8 model against the fp32 one (`.evaluation`).
        task: a `Task` or its kind ("multiclass", "binary", "multilabel", "regression"; width from the model).
        kd: qat with a teacher: temperature and alpha of the KD loss (default `KDConfig()`).
        out_dir: where the model file and meta.json go (default: a temporary folder).
        preprocess, teacher_preprocess: raw batch → model input (default: the batch is the input).
        objective: qat: a distillation `KDObjective` to train with (the CLI passes student_kd's).
        seed: recorded, and seeds QAT.
        input_key, label_key: where dict batches keep the input and the label.
        **settings: the mode's config fields (`Int8StaticConfig`: calibration_samples, per_channel, ...).

    Returns:
        The `QuantizedModel` (module and/or file, `meta`), with `.evaluation` when `val_loader` is given.

    Raises:
        KdtoolError: an unknown mode, backend or setting; min_retention or qat without the data they need.
    """
    from compress.quant.quantize import QUANT_MODES, evaluate_quantized, make_config
    from compress.quant.quantize import quantize as quantize_with

    QUANT_MODES.get(mode)
    if min_retention is not None:
        if mode != "static":
            raise KdtoolError(f"quantize {mode}: min_retention applies to static quantization only",
                              "use mode='static', or drop min_retention")
        if val_loader is None:
            raise KdtoolError("quantize static: min_retention needs val_loader (the floor is checked on it)",
                              "pass val_loader= with labels")
        settings["min_retention"] = min_retention
    config = make_config(mode, **({"backend": backend} if backend else {}), **settings)
    calib = as_batches(calib_loader, "calib_loader", input_key, label_key, needs_labels=mode == "qat") \
        if calib_loader is not None else None
    val = as_batches(val_loader, "val_loader", input_key, label_key) if val_loader is not None else None
    pre = preprocess or _identity
    source = calib if calib is not None else val
    raw = source.first()[0] if source is not None else None  # consumes one iteration, as `quantize_with` would
    example = pre(raw[:2]) if raw is not None else None
    if example is not None:  # an input the model cannot take: one line naming both shapes, not torch's traceback
        forward_checked(BuiltModel(model, Preprocess(kind="tensor"), type(model).__name__), example,
                        "calib_loader: student" if calib is not None else "val_loader: student")
    if task is not None or val is not None or mode == "qat":
        task = as_task(task, model, example)
    if mode == "qat" and teacher is not None and objective is None:
        from compress.distill.objective import KDObjective

        objective = KDObjective(task, kd or DistillConfig(), model, teacher, example,
                                (teacher_preprocess or pre)(raw[:2]))
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix=f"kdtool-{mode}-"))
    if mode == "static" and val is not None:  # accuracy-aware: keeps sensitive layers float below the floor
        from compress.quant.accuracy import quantize_with_floor
        from compress.quant.configs import QuantInputs

        qi = QuantInputs(example=example, calibration=calib, preprocess=pre, out=out, seed=seed)
        qm, evaluation = quantize_with_floor(model, config, qi, val, task)
    else:
        qm = quantize_with(model, config, example=example, calibration=calib, preprocess=pre, out=out, seed=seed,
                           teacher=teacher, teacher_preprocess=teacher_preprocess or preprocess, task=task,
                           objective=objective)
        evaluation = evaluate_quantized(qm, model, val, pre, task) if val is not None else None
    qm.evaluation = evaluation
    return qm


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x
