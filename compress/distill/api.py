"""The Python API for users with their own models and data loaders (the CLI runs the same code).

```python
from compress import Distiller, KDConfig
student = Distiller(teacher, student, task="multiclass", num_outputs=10,
                    kd=KDConfig(temperature=3, alpha=0.4)).fit(train_loader, val_loader)
```
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import DataLoader, Dataset

from compress.core.tasks import Task
from compress.distill.trainer import FitResult, fit
from compress.models.build import BuiltModel, Preprocess
from compress.models.weights import load_weights
from recipes.schema import DataConfig, DistillConfig, TrainConfig

KDConfig = DistillConfig
"""Distillation settings: temperature, alpha (hard-label weight), schedules, extra KD terms."""


class _Indexed(Dataset):
    """Adds the sample index kdtool's loop expects to a user's (input, target) dataset."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        x, y = self.ds[i][:2]
        return x, y, i


class Distiller:
    """Distill `teacher` into `student` on the user's own data loaders.

    Args:
        teacher: a trained model (frozen during distillation); None trains the student on labels only.
        student: the model to train.
        task: binary, multiclass, multilabel or regression.
        num_outputs: head width; inferred from the student when omitted.
        kd: distillation settings (`KDConfig`).
        train: optimizer/schedule settings (`TrainConfig`).
        out_dir: where checkpoints go (a temporary folder by default).
    """

    def __init__(self, teacher: nn.Module | None, student: nn.Module, task: str = "multiclass",
                 num_outputs: int | None = None, kd: DistillConfig | None = None, train: TrainConfig | None = None,
                 out_dir: str | Path | None = None, **task_kwargs: Any) -> None:
        if num_outputs is None:
            heads = [m for m in student.modules() if isinstance(m, nn.Linear)]
            num_outputs = heads[-1].out_features if heads else 1
        self.task = Task(task, num_outputs, **task_kwargs)
        self.teacher, self.student = teacher, student
        self.kd = kd or DistillConfig()
        self.train = train or TrainConfig(epochs=10)
        self.out_dir = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="kdtool-"))
        self.result: FitResult | None = None

    def fit(self, train_loader: DataLoader, val_loader: DataLoader) -> nn.Module:
        """Train and return the student with its best validation weights loaded."""
        pre = Preprocess(kind="tensor")
        data_cfg = DataConfig(batch_size=train_loader.batch_size or 32)
        self.result = fit(BuiltModel(self.student, pre, type(self.student).__name__),
                          _Indexed(train_loader.dataset), _Indexed(val_loader.dataset), self.task, self.train,
                          self.out_dir, data_cfg=data_cfg,
                          teacher=BuiltModel(self.teacher, pre, type(self.teacher).__name__) if self.teacher else None,
                          distill=self.kd if self.teacher is not None else None, label="distill")
        load_weights(self.student, self.out_dir / "best.safetensors", "student")
        return self.student.eval()
