"""`Distiller`: distillation from Python with the user's own models and DataLoaders (the CLI runs the same loop).

```python
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from compress import Distiller, KDConfig
from recipes.schema import TrainConfig

x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
teacher = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
student = nn.Linear(8, 3)
student = Distiller(teacher, student, task="multiclass", kd=KDConfig(temperature=3, alpha=0.4),
                    train=TrainConfig(epochs=1)).fit(loader, loader)
assert student(x).shape == (64, 3)
```
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from compress.core.errors import KdtoolError
from compress.core.tasks import Task
from compress.data.batches import LoaderBatches, describe
from compress.distill import distributed
from compress.distill.trainer import FitResult, fit
from compress.models.build import BuiltModel, Preprocess, check_model_io
from compress.models.weights import load_weights
from recipes.schema import DataConfig, DistillConfig, TrainConfig

log = logging.getLogger(__name__)

KDConfig = DistillConfig
"""Distillation settings: temperature, alpha (hard-label weight), schedules, extra KD terms."""


class Distiller:
    """Distill `teacher` into `student` on the user's own data loaders.

    The loaders are used as given (collate_fn, sampler or batch sampler, workers, pin_memory,
    drop_last, persistent_workers): see `compress.data.batches` for the batch shapes read.

    Args:
        teacher: a trained model (frozen during distillation); None trains the student on labels only.
        student: the model to train.
        task: binary, multiclass, multilabel or regression.
        num_outputs: head width; inferred from the student's last linear layer when omitted.
        kd: distillation settings (`KDConfig`). Its `cache` is a recipe feature: with user loaders the
            teacher runs online (a user's sampler and collate_fn give no stable sample index to key it on).
        train: optimizer/schedule settings (`TrainConfig`); its `batch_size` is ignored (the loader's wins).
        out_dir: where checkpoints go (a temporary folder by default).
        input_key, label_key: where dict batches keep the input and the label.
        **task_kwargs: `Task` fields such as `labels` or `metric`.
    """

    def __init__(self, teacher: nn.Module | None, student: nn.Module, task: str = "multiclass",
                 num_outputs: int | None = None, kd: DistillConfig | None = None, train: TrainConfig | None = None,
                 out_dir: str | Path | None = None, input_key: str = "input", label_key: str = "label",
                 **task_kwargs: Any) -> None:
        if num_outputs is None:
            heads = [m for m in student.modules() if isinstance(m, nn.Linear)]
            num_outputs = heads[-1].out_features if heads else 1
        self.task = Task(task, num_outputs, **task_kwargs)
        self.teacher, self.student = teacher, student
        self.kd = kd or DistillConfig()
        self.train = train or TrainConfig(epochs=10)
        self.out_dir = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="kdtool-"))
        self.input_key, self.label_key = input_key, label_key
        self.result: FitResult | None = None

    def batches(self, loader: DataLoader, name: str) -> LoaderBatches:
        """`loader` as kdtool's loops read it (with this Distiller's dict keys; labels required)."""
        return LoaderBatches(loader, name, self.input_key, self.label_key, needs_labels=True)

    def fit(self, train_loader: DataLoader, val_loader: DataLoader) -> nn.Module:
        """Train and return the student with its best validation weights loaded.

        Args:
            train_loader: the training batches, used as given (under torchrun see `loader_for_rank`).
            val_loader: the batches the best epoch is chosen on (every rank runs all of it).

        Raises:
            KdtoolError: at the first batch, when a loader yields no labels, or an input shape a model
                cannot take (the message names the shape expected and the shape received).
        """
        if self.kd.cache.enabled:
            log.warning("distill.cache is not used with your own loaders: the teacher runs online "
                        "(a user's sampler and collate_fn give no stable sample index)")
        train = self.batches(loader_for_rank(train_loader), "train_loader")
        val = self.batches(val_loader, "val_loader")
        pre = Preprocess(kind="tensor")
        student = BuiltModel(self.student, pre, type(self.student).__name__)
        teacher = BuiltModel(self.teacher, pre, type(self.teacher).__name__) if self.teacher is not None else None
        for name, batches in (("train_loader", train), ("val_loader", val)):
            check_batch(batches, student, teacher, self.task, name)
        data_cfg = DataConfig(batch_size=getattr(train_loader, "batch_size", None) or 1)  # no kdtool augmentation
        self.result = fit(student, train, val, self.task, self.train, self.out_dir, data_cfg=data_cfg,
                          teacher=teacher, distill=self.kd if teacher is not None else None, label="distill",
                          batch_size=data_cfg.batch_size)
        load_weights(self.student, self.out_dir / "best.safetensors", "student")
        return self.student.eval()


def check_batch(batches: LoaderBatches, student: BuiltModel, teacher: BuiltModel | None, task: Task,
                name: str) -> None:
    """The first batch of a loader: labels present and valid, and every model takes its input.

    Raises:
        KdtoolError: no labels, labels outside the task's range, or an input a model cannot take.
    """
    x, y = batches.first()
    if y is not None and y.numel():
        task.check_targets(y, f"{name} labels")
    for role, built in (("student", student), ("teacher", teacher)):
        if built is not None:
            try:
                check_model_io(built, x[:2], task, role)
            except KdtoolError as e:
                raise KdtoolError(f"{name}: {e.message}", e.hint) from e.__cause__


def loader_for_rank(loader: DataLoader) -> DataLoader:
    """The user's loader under torchrun: kept when its sampler already shards (a `DistributedSampler`) or is
    the user's own (a weighted or batch sampler: each rank draws from it); a plain shuffled/sequential loader
    gets a `DistributedSampler` (with a warning), everything else about it unchanged. One process: as given."""
    if distributed.world_size() <= 1 or not isinstance(loader, DataLoader):
        return loader
    sampler = loader.sampler
    if isinstance(sampler, DistributedSampler):
        return loader
    if not isinstance(sampler, RandomSampler | SequentialSampler) or loader.batch_size is None:
        log.warning("DDP: %s keeps your own sampler (%s); each of the %d ranks draws from it, so make it "
                    "rank-aware if the ranks must see different samples", describe(loader),
                    type(sampler).__name__, distributed.world_size())
        return loader
    log.warning("DDP: your loader's %s was replaced by a DistributedSampler (each of the %d ranks takes its "
                "share); collate_fn, workers, pin_memory and drop_last are kept", type(sampler).__name__,
                distributed.world_size())
    shard = DistributedSampler(loader.dataset, num_replicas=distributed.world_size(), rank=distributed.rank(),
                               shuffle=isinstance(sampler, RandomSampler))
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=shard, collate_fn=loader.collate_fn,
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
                      timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
                      prefetch_factor=loader.prefetch_factor, persistent_workers=loader.persistent_workers)
