"""Datasets: each item is (raw sample, target, index); per-model preprocessing happens on the batch.

Raw images are float32 (C, H, W) in [0, 1] at `data.image_size`; raw audio is float32 (samples,)
at `data.sample_rate`. Teacher and student each preprocess the same raw batch their own way
(`compress.models.build.Preprocess`), so a 380 px teacher and a 256 px student see one image.

Sources register in `DATA_SOURCES`: `fn(data_cfg, task) -> (train, val)`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from compress.core.errors import KdtoolError
from compress.core.tasks import Task
from compress.data.registry import DATA_SOURCES, TensorSamples
from recipes.schema import DataConfig


@DATA_SOURCES.register("digits")
def digits_source(cfg: DataConfig, task: Task) -> tuple[Dataset, Dataset]:
    """scikit-learn's 1,797 real 8×8 handwritten digits, resized to `data.image_size`; stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if task.kind != "multiclass" or task.num_outputs != 10:
        raise KdtoolError("data.source digits has 10 classes", "set task.kind: multiclass and task.num_classes: 10")
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    x = F.interpolate(x, size=(cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False).clamp(0, 1)
    if cfg.channels == 3:
        x = x.expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(y, dtype=torch.long)
    idx_train, idx_val = train_test_split(np.arange(len(y)), test_size=cfg.val_fraction, random_state=0,
                                          stratify=y.numpy())
    if cfg.limit:
        idx_train, idx_val = idx_train[: cfg.limit], idx_val[: max(2, cfg.limit // 4)]
    return TensorSamples(x[idx_train], y[idx_train]), TensorSamples(x[idx_val], y[idx_val])


def build_datasets(cfg: DataConfig, task: Task) -> tuple[Dataset, Dataset]:
    """The recipe's (train, val) datasets, checked for emptiness and label validity; train holds the transfer set."""
    train, val, _ = build_splits(cfg, task)
    return train, val


def build_splits(cfg: DataConfig, task: Task) -> tuple[Dataset, Dataset, Dataset | None]:
    """The recipe's (train, val, test) datasets; test is None without `data.test_root`/`test_fraction`.

    `data.test_root` is read like `data.val_root` (same source, same classes); `data.test_fraction`
    holds out a stratified share of the training split (seed 0), so validation is unchanged. The
    training split then holds the transfer set (`data.labeled_fraction`, `data.unlabeled_root`).
    """
    import compress.data.files  # noqa: F401  (registers imagefolder/csv/audiofolder)
    import compress.data.synthetic  # noqa: F401  (registers synthetic_images/synthetic_audio)
    from compress.data.transfer import transfer_set

    train, val = DATA_SOURCES.get(cfg.source)(cfg, task)
    test = None
    if cfg.test_root is not None:  # the source reads it as its validation split
        _, test = DATA_SOURCES.get(cfg.source)(cfg.model_copy(update={"val_root": cfg.test_root}), task)
    elif cfg.test_fraction is not None:
        train, test = _hold_out(train, cfg.test_fraction, task, cfg.root or cfg.source)
    _check_splits(cfg, task, train, val, test)
    return transfer_set(train, cfg, task), val, test


def _hold_out(train: Dataset, fraction: float, task: Task, where) -> tuple[Dataset, Dataset]:
    """Split `fraction` of the training samples off as the test split (stratified when labels allow)."""
    from compress.data.files import split_indices
    from compress.data.folds import FoldSamples

    targets = getattr(train, "targets", None)
    labels = targets.numpy() if isinstance(targets, torch.Tensor) else np.zeros(len(train))
    keep, test = split_indices(labels, task, fraction, seed=0, where=f"data.test_fraction ({where})")
    return (FoldSamples([train], [(0, int(i)) for i in keep]),
            FoldSamples([train], [(0, int(i)) for i in test]))


def _check_splits(cfg, task: Task, train: Dataset, val: Dataset, test: Dataset | None) -> None:
    for name, ds in (("training", train), ("validation", val), ("test", test)):
        if ds is None:
            continue
        if len(ds) == 0:
            where = cfg.root or cfg.source
            raise KdtoolError(f"data: the {name} split of {where} is empty", "point data.root at a folder with samples")
    targets = getattr(train, "targets", None)
    if isinstance(targets, torch.Tensor):
        task.check_targets(targets, f"data ({cfg.root or cfg.source}) training labels")


def seed_worker(worker_id: int) -> None:
    """Distinct, reproducible seeds per data worker (derived from the loader's generator)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def example_batch(ds: Dataset, n: int = 2) -> torch.Tensor:
    """The first `n` raw samples of a dataset as one batch (shape probes, adapter sizing, I/O checks)."""
    return torch.stack([ds[i][0] for i in range(min(n, len(ds)))])


def make_loader(ds: Dataset, batch_size: int, shuffle: bool, seed: int, epoch: int = 0, num_workers: int = 0,
                sampler=None) -> DataLoader:
    """A loader whose order depends only on (seed, epoch): resuming at an epoch replays it exactly."""
    g = torch.Generator()
    g.manual_seed(seed * 1000 + epoch)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      generator=g, num_workers=num_workers, worker_init_fn=seed_worker, drop_last=False,
                      persistent_workers=False)


def augment_batch(raw: torch.Tensor, cfg: DataConfig, generator: torch.Generator,
                  shard: tuple[int, int] = (0, 1)) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flip / pad-crop (images) or roll (audio) applied to a raw batch, returning the parameters.

    Args:
        raw: (N, C, H, W) images or (N, samples) audio.
        cfg: the recipe's `DataConfig` (its `augment` section).
        generator: the draws' source; seeded per (seed, epoch, step) by the trainer.
        shard: (rank, world size). Under DDP each rank holds every `world`-th sample of the global
            batch (DistributedSampler's interleaving), so parameters are drawn for the whole global
            batch and this rank keeps its slice: N processes augment exactly like one.

    Returns:
        (augmented batch, params (N, 3) int: [flip, dy, dx] for images or [shift, 0, 0] for audio)
        so a teacher cache can be keyed on the exact view.
    """
    rank, world = shard
    n = raw.shape[0] * world
    params = torch.zeros(n, 3, dtype=torch.long)
    a = cfg.augment
    if raw.dim() == 2:  # audio (N, samples)
        if a.time_shift > 0:
            max_shift = int(a.time_shift * raw.shape[1])
            params[:, 0] = torch.randint(-max_shift, max_shift + 1, (n,), generator=generator)
    else:
        if a.hflip:
            params[:, 0] = torch.randint(0, 2, (n,), generator=generator)
        if a.crop_pad > 0:
            params[:, 1:] = torch.randint(0, 2 * a.crop_pad + 1, (n, 2), generator=generator)
    params = params[rank::world]
    return apply_augment(raw, params, cfg), params


def apply_augment(raw: torch.Tensor, params: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """Replay recorded augmentation parameters on a raw batch (deterministic).

    The per-sample slices are plain memory copies: measured faster on CPU than one advanced-index
    gather (64×3×32² batch: 1.5 ms vs 5.1 ms; 8×3×380²: 33 ms vs 76 ms).
    """
    if not params.any():
        return raw
    if raw.dim() == 2:
        return torch.stack([torch.roll(r, int(s)) for r, s in zip(raw, params[:, 0], strict=True)])
    out = raw
    flip = params[:, 0].bool()
    if flip.any():
        out = out.clone()
        out[flip] = out[flip].flip(-1)
    p = cfg.augment.crop_pad
    if p > 0:
        h, w = out.shape[-2:]
        padded = F.pad(out, (p, p, p, p), mode="replicate")
        out = torch.stack([padded[i, :, dy:dy + h, dx:dx + w]
                           for i, (dy, dx) in enumerate(params[:, 1:].tolist())])
    return out


def collect_outputs(run: Callable[[torch.Tensor], torch.Tensor], loader: Iterable,
                    preprocess: Callable[[torch.Tensor], torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs and targets of `run` over a loader of (raw, target, index) batches, in order.

    The one output-collection loop: validation during training, quantized-model evaluation and the
    benchmark's artifact metrics all go through it. An empty loader gives two empty tensors.
    """
    outs, targets = [], []
    with torch.no_grad():
        for raw, target, *_ in loader:
            x = preprocess(raw) if preprocess is not None else raw
            outs.append(run(x).float())
            targets.append(target)
    if not outs:  # e.g. an empty slice of a DDP evaluation
        return torch.empty(0), torch.empty(0)
    return torch.cat(outs), torch.cat(targets)

