"""The transfer set: training samples without labels, which the KD student learns from the teacher alone.

Users have far more unlabeled images or clips than labels (Hinton et al. 2015's transfer set; Chen
et al. 2020, "Big Self-Supervised Models are Strong Semi-Supervised Learners"; Noisy Student). Two
recipe keys make one:

- `data.unlabeled_root`: a folder of unlabeled images/clips (any layout), appended to the training split.
- `data.labeled_fraction`: keep the labels of that share of the training split (stratified, fixed
  seed) and hide the rest; the offline demo of a label-scarce task (e.g. 10 % of the digits).

A sample without a label carries a marker target (`UNLABELED` = -1 for integer targets, NaN for
float ones), so it travels through loaders, folds and the teacher cache like any other sample;
the KD objective masks the hard loss to the labeled rows (`labeled_mask`). The teacher and the
student baseline train on `labeled_part`: the labeled samples only, repeated to the size of the
whole split so they take as many steps per epoch as they would with every label.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from compress.core.errors import KdtoolError
from compress.core.tasks import Task
from compress.data.files import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, Decoder, _kind_of, materialise
from compress.data.folds import FoldSamples

UNLABELED = -1
"""The target of an unlabeled sample with integer targets (float targets use NaN)."""

HIDE_SEED = 0
"""Which labels `data.labeled_fraction` hides: fixed, so every seed of an ablation sees the same labels."""


def unlabeled_like(target: torch.Tensor) -> torch.Tensor:
    """The marker target with `target`'s shape and dtype: -1 (integers) or NaN (floats)."""
    target = torch.as_tensor(target)
    return torch.full_like(target, float("nan") if target.is_floating_point() else UNLABELED)


def labeled_mask(targets: torch.Tensor) -> torch.Tensor:
    """(N,) bool: which rows of a target batch carry a label (not the `unlabeled_like` marker)."""
    rows = targets.reshape(len(targets), -1)
    if rows.is_floating_point():
        return ~torch.isnan(rows).all(1)
    return (rows != UNLABELED).any(1)


class TransferSet(Dataset):
    """A training split with some labels hidden and unlabeled samples appended, indexed 0..n-1.

    Args:
        base: the training split (items: raw, target, index).
        hidden: indices of `base` whose labels are hidden.
        unlabeled: extra samples without labels (their targets are ignored), or None.
    """

    def __init__(self, base: Dataset, hidden: np.ndarray, unlabeled: Dataset | None = None) -> None:
        self.base, self.unlabeled = base, unlabeled
        self.hidden = np.zeros(len(base), dtype=bool)
        self.hidden[np.asarray(hidden, dtype=np.int64)] = True
        self._marker = unlabeled_like(base[0][1])
        targets = getattr(base, "targets", None)
        if isinstance(targets, torch.Tensor):
            shown = targets.clone()
            shown[torch.from_numpy(self.hidden)] = self._marker
            extra = self._marker.expand(len(unlabeled or []), *self._marker.shape)
            self.targets = torch.cat([shown, extra.to(shown.dtype)])

    def __len__(self) -> int:
        return len(self.base) + len(self.unlabeled or [])

    def __getitem__(self, j: int):
        if j < len(self.base):
            raw, target, _ = self.base[j]
            return raw, (self._marker if self.hidden[j] else target), j
        raw, _, _ = self.unlabeled[j - len(self.base)]
        return raw, self._marker, j

    @property
    def labeled_indices(self) -> np.ndarray:
        """Indices (into this set) of the samples that keep their labels."""
        return np.flatnonzero(~self.hidden)


def transfer_set(train: Dataset, cfg, task: Task, unlabeled: Dataset | None = None) -> Dataset:
    """`train` with `cfg.labeled_fraction` of its labels kept and the `cfg.unlabeled_root` samples appended.

    Args:
        train: the (fully labeled) training split.
        cfg: the recipe's `DataConfig`.
        task: the task (stratification of the kept labels).
        unlabeled: the unlabeled samples, when already loaded (cross-validation folds reuse them).

    Returns:
        `train` itself when nothing is hidden or added, else a `TransferSet`.
    """
    if unlabeled is None and cfg.unlabeled_root is not None:
        unlabeled = unlabeled_folder(cfg, train)
    if cfg.labeled_fraction >= 1.0 and unlabeled is None:
        return train
    return TransferSet(train, hidden_indices(train, task, cfg.labeled_fraction), unlabeled)


def hidden_indices(train: Dataset, task: Task, fraction: float, seed: int = HIDE_SEED) -> np.ndarray:
    """Indices whose labels to hide so that `fraction` stay, stratified by class (at least one per class)."""
    n = len(train)
    if fraction >= 1.0:
        return np.zeros(0, dtype=np.int64)
    targets = getattr(train, "targets", None)
    rng = np.random.default_rng(seed)
    if task.kind in ("binary", "multiclass") and isinstance(targets, torch.Tensor) and targets.dim() == 1:
        groups = [np.flatnonzero(targets.numpy() == c) for c in np.unique(targets.numpy())]
    else:
        groups = [np.arange(n)]
    hidden = [rng.permutation(g)[max(1, math.ceil(fraction * len(g))):] for g in groups]
    return np.sort(np.concatenate(hidden))


def labeled_part(train: Dataset) -> Dataset:
    """The labeled samples of a training set, repeated to its labeled-and-hidden size (as many steps per epoch).

    What the teacher and the student baseline train on. Samples from `data.unlabeled_root` do not
    count towards the size: with all labels kept this is the original split.
    """
    if not isinstance(train, TransferSet):
        return train
    keep = train.labeled_indices
    if len(keep) == 0:
        raise KdtoolError("data.labeled_fraction leaves no labeled training sample",
                          "raise data.labeled_fraction")
    picks = [(0, int(keep[i % len(keep)])) for i in range(len(train.base))]
    return FoldSamples([train.base], picks)


def fully_labeled(train: Dataset) -> tuple[Dataset, Dataset | None]:
    """(the split with every label, the unlabeled samples or None): what cross-validation folds re-split."""
    if isinstance(train, TransferSet):
        return train.base, train.unlabeled
    return train, None


def folder_fingerprint(root: Path) -> str:
    """sha256 of a folder's file list (relative paths, sizes, modification times): changes when files do."""
    h = hashlib.sha256()
    root = Path(root)
    if root.is_dir():
        for p in sorted(q for q in root.rglob("*") if q.is_file()):
            st = p.stat()
            h.update(f"{p.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def unlabeled_folder(cfg, train: Dataset) -> Dataset:
    """Every image (or every clip) under `data.unlabeled_root`, decoded like the training data.

    Raises:
        KdtoolError: the folder is missing or empty, or holds another kind of sample than the training data.
    """
    root = Path(cfg.unlabeled_root)
    if not root.is_dir():
        raise KdtoolError(f"data.unlabeled_root {root} is not a folder", "point it at a folder of images or clips")
    exts = IMAGE_EXTENSIONS | AUDIO_EXTENSIONS
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in exts and p.is_file()
                   and not p.name.startswith("."))
    if not paths:
        raise KdtoolError(f"data.unlabeled_root {root} holds no images or .wav clips",
                          f"add files ({' '.join(sorted(exts))}) or remove data.unlabeled_root")
    kind = _kind_of(paths, root)
    expected = "audio" if train[0][0].dim() == 1 else "image"
    if kind != expected:
        raise KdtoolError(f"data.unlabeled_root {root} holds {kind} files but the training data is {expected}",
                          f"point data.unlabeled_root at {expected} files")
    dummy = np.zeros(len(paths), dtype=np.int64)
    (samples,) = materialise(cfg, Decoder.for_config(kind, cfg), [(paths, dummy)], f"data.unlabeled_root {root}")
    return samples
