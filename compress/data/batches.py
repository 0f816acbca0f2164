"""The user's own `DataLoader`, used as given, in the shape kdtool's loops read: (input, target, position).

kdtool's loops (training, validation, calibration, QAT, the benchmark's metrics) iterate
`(raw, target, index)` batches. `LoaderBatches` wraps a user's loader without rebuilding it: its
`collate_fn`, sampler or batch sampler, `num_workers`, `pin_memory`, `drop_last` and
`persistent_workers` all stay as they are. Each batch is only unpacked:

- a tuple or list: `(input, label, ...)`; extra items (lengths, ids) are ignored;
- a dict: `batch[input_key]` and `batch[label_key]` (default "input" and "label");
- a bare tensor: the input alone (no labels: fine for calibration, an error where labels are needed).

The third item is the batch's position in the epoch (`torch.arange`), not a dataset index: a user's
sampler and collate function give no stable sample index, so what needs one (the teacher cache)
is not used with user loaders.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from compress.core.errors import KdtoolError


def describe(value: Any) -> str:
    """A batch's structure in a few words: `tuple(Tensor(8, 16000), Tensor(8,))`, `dict(audio, y)`."""
    if isinstance(value, torch.Tensor):
        return f"Tensor{tuple(value.shape)}"
    if isinstance(value, dict):
        return f"dict with keys {sorted(map(str, value))}"
    if isinstance(value, list | tuple):
        return f"{type(value).__name__}({', '.join(describe(v) for v in value[:4])}{', …' if len(value) > 4 else ''})"
    return type(value).__name__


class LoaderBatches:
    """A user's `DataLoader` (kept as is), iterated as `(input, target, position)` batches.

    Args:
        loader: the user's loader (any collate_fn, sampler, workers); under DDP, see
            `compress.distill.api.loader_for_rank`.
        name: how errors name it ("train_loader", "val_loader", "calib_loader").
        input_key, label_key: where a dict batch keeps the input and the label.
        needs_labels: a batch without a label is an error (training and scoring need one).

    Raises:
        KdtoolError: (on iteration) a batch without an input tensor, or without labels when they are needed.
    """

    def __init__(self, loader: Any, name: str = "loader", input_key: str = "input", label_key: str = "label",
                 needs_labels: bool = True) -> None:
        self.loader, self.name = loader, name
        self.input_key, self.label_key, self.needs_labels = input_key, label_key, needs_labels
        self._first: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def __len__(self) -> int:
        try:
            return len(self.loader)
        except TypeError:
            raise KdtoolError(f"{self.name} has no length (an IterableDataset without __len__)",
                              "give the dataset a __len__: the schedule needs the number of steps per epoch") from None

    def unpack(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(input, label or None) of one batch as the user's collate_fn made it."""
        if isinstance(batch, dict):
            if self.input_key not in batch:
                raise KdtoolError(f"{self.name} yields {describe(batch)}: no input key {self.input_key!r}",
                                  "pass input_key= naming the batch's input")
            x, y = batch[self.input_key], batch.get(self.label_key)
        elif isinstance(batch, list | tuple):
            x, y = (batch[0] if batch else None), (batch[1] if len(batch) > 1 else None)
        else:
            x, y = batch, None
        if not isinstance(x, torch.Tensor):
            raise KdtoolError(f"{self.name} yields {describe(batch)}: its input is not a tensor",
                              "return (input tensor, label) batches, or a dict with an input tensor")
        if y is None and self.needs_labels:
            keys = f"(input, label) tuples or dicts with {self.label_key!r}"
            raise KdtoolError(f"{self.name} yields {describe(batch)} without labels; the task needs {keys}",
                              "return the labels with each batch, or pass label_key= naming them")
        return x, (torch.as_tensor(y) if y is not None else None)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        seen = 0
        for batch in self.loader:
            x, y = self.unpack(batch)
            n = len(x)
            yield x, (y if y is not None else torch.zeros(n)), torch.arange(seen, seen + n)
            seen += n

    def first(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The first batch's (input, label), read once: shape checks before anything is trained."""
        if self._first is None:
            for batch in self.loader:
                self._first = self.unpack(batch)
                break
            else:
                raise KdtoolError(f"{self.name} yields no batches", "give it a dataset with samples")
        return self._first

    def set_epoch(self, epoch: int) -> None:
        """Tell the loader's sampler (a `DistributedSampler`, or any with `set_epoch`) the epoch."""
        for sampler in (getattr(self.loader, "sampler", None), getattr(self.loader, "batch_sampler", None)):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)


def as_batches(loader: Any, name: str, input_key: str = "input", label_key: str = "label",
               needs_labels: bool = True) -> LoaderBatches:
    """`loader` as `LoaderBatches` (returned as is when it already is one)."""
    if isinstance(loader, LoaderBatches):
        return loader
    if not isinstance(loader, DataLoader) and not hasattr(loader, "__iter__"):
        raise KdtoolError(f"{name} is a {type(loader).__name__}, not a DataLoader", "pass a torch DataLoader")
    return LoaderBatches(loader, name, input_key, label_key, needs_labels)
