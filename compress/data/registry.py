"""The registry of data sources (`fn(data_cfg, task) -> (train, val)`) and the in-memory dataset type."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from compress.core.registry import Registry

DATA_SOURCES: Registry[Callable] = Registry("data source")


class TensorSamples(Dataset):
    """In-memory samples: raw (N, ...) float tensor and targets (N, ...)."""

    def __init__(self, raw: torch.Tensor, targets: torch.Tensor) -> None:
        self.raw, self.targets = raw, targets

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, i: int):
        return self.raw[i], self.targets[i], i
