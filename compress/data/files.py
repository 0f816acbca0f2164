"""File-backed data sources: `imagefolder`, `csv` manifests and `audiofolder`.

Layouts::

    imagefolder   root/<class>/**/*.png|jpg|jpeg|bmp|gif|webp|tif   (ids: task.labels order, else sorted)
    audiofolder   root/<class>/**/*.wav
    csv           path,label | path,<label names...> (multilabel) | path,<task.outputs...> (regression);
                  paths relative to the CSV's folder; images or WAV files, told apart by extension

Decoding policy: every file is checked once when the dataset is built, so bad files (corrupt,
truncated, missing) are counted before training starts and every epoch sees the same samples. When
the decoded set fits in `CACHE_BYTES` (images as uint8, audio as float32) it is decoded fully and kept
in memory; larger sets are checked by header only (PIL `verify`, WAV chunk sizes against the file size)
and decoded lazily in `__getitem__`, where a file that still fails raises a `KdtoolError` naming it.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from compress.core.errors import KdtoolError
from compress.core.tasks import Task
from compress.data.registry import DATA_SOURCES
from compress.data.wav import fit_length, read_wav, resample_linear
from recipes.schema import DataConfig

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
AUDIO_EXTENSIONS = frozenset({".wav"})
CACHE_BYTES = 512 * 2**20
"""Decoded sets up to this size are decoded once and kept in memory; larger ones are decoded lazily."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decoder:
    """Turns one file into a raw sample (picklable, so DataLoader workers can use it)."""

    kind: str  # "image" | "audio"
    image_size: int = 32
    channels: int = 3
    sample_rate: int = 16000
    num_samples: int = 16000

    @classmethod
    def for_config(cls, kind: str, cfg: DataConfig) -> Decoder:
        """The decoder for `kind` at the recipe's raw size, channels and sample rate."""
        num_samples = int(round(cfg.sample_rate * cfg.clip_seconds))
        return cls(kind, cfg.image_size, cfg.channels, cfg.sample_rate, num_samples)

    @property
    def sample_bytes(self) -> int:
        """Bytes one cached sample takes."""
        return self.channels * self.image_size**2 if self.kind == "image" else 4 * self.num_samples

    def decode(self, path: Path) -> np.ndarray:
        """Image: uint8 (C, H, W), short side resized then center-cropped. Audio: float32 (samples,)."""
        if self.kind == "image":
            from PIL import Image, ImageOps

            with Image.open(path) as im:
                im = ImageOps.exif_transpose(im).convert("RGB" if self.channels == 3 else "L")
                im = ImageOps.fit(im, (self.image_size, self.image_size), method=Image.Resampling.BILINEAR)
                a = np.asarray(im, dtype=np.uint8)
            return a[None].copy() if a.ndim == 2 else a.transpose(2, 0, 1).copy()
        wav, rate = read_wav(path)
        mono = wav.mean(axis=1)
        if rate != self.sample_rate:
            mono = resample_linear(mono, rate, self.sample_rate)
        return fit_length(mono, self.num_samples)

    def check(self, path: Path) -> None:
        """Header-only validation (large sets): raises if the file is clearly unreadable."""
        if self.kind == "image":
            from PIL import Image

            with Image.open(path) as im:
                im.verify()
        else:
            read_wav(path, header_only=True)

    def to_tensor(self, a: np.ndarray) -> torch.Tensor:
        """Raw float32 sample: images scaled to [0, 1]."""
        t = torch.from_numpy(a)
        return t.float().div_(255.0) if t.dtype == torch.uint8 else t


class FileSamples(Dataset):
    """Samples from files: decoded once and cached (`cache`), or decoded on access."""

    def __init__(self, paths: list[Path], targets: torch.Tensor, decoder: Decoder,
                 cache: list[np.ndarray] | None = None) -> None:
        self.paths, self.targets, self.decoder, self.cache = paths, targets, decoder, cache

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        if self.cache is not None:
            return self.decoder.to_tensor(self.cache[i]), self.targets[i], i
        try:
            a = self.decoder.decode(self.paths[i])
        except Exception as e:  # decoders (PIL plugins, WAV) raise many types; name the file instead
            raise KdtoolError(f"data: {self.paths[i]} passed the header check but could not be decoded ({e})",
                              "remove or replace the file") from e
        return self.decoder.to_tensor(a), self.targets[i], i


# ---------------------------------------------------------------- listing


def list_class_folders(root: Path, task: Task, kind: str, key: str = "data.root",
                       classes: tuple[str, ...] | None = None,
                       ) -> tuple[list[Path], np.ndarray, tuple[str, ...]]:
    """Files of `root/<class>/**` with their class ids.

    Args:
        root: the folder holding one subfolder per class.
        task: binary or multiclass; the class count must match it.
        kind: "image" or "audio" (which extensions count).
        key: the recipe key named in errors (`data.root`, `data.val_root`).
        classes: the training set's class order (for a validation folder); else derived here.

    Returns:
        (paths, class ids (N,), class names in id order).
    """
    root = Path(root)
    if not root.is_dir():
        raise KdtoolError(f"{key} {root} is not a folder", "point it at a folder of class subfolders")
    exts = IMAGE_EXTENSIONS if kind == "image" else AUDIO_EXTENSIONS
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not dirs:
        raise KdtoolError(f"{key} {root} is empty: no class folders", f"lay it out as {root}/<class>/<file>")
    names = tuple(d.name for d in dirs)
    if classes is None:
        classes = _class_order(names, task, root, key)
    paths: list[Path] = []
    targets: list[int] = []
    for d in dirs:
        if d.name not in classes:
            raise KdtoolError(f"{key} {root}: folder {d.name!r} is not one of the classes {list(classes)}",
                              "rename or remove it, or list it in task.labels")
        files = sorted(p for p in d.rglob("*") if p.suffix.lower() in exts and not p.name.startswith(".")
                       and p.is_file())
        if not files:
            raise KdtoolError(f"{key}: class folder {d} is empty (no {' '.join(sorted(exts))} files)",
                              "add samples or remove the folder")
        paths += files
        targets += [classes.index(d.name)] * len(files)
    return paths, np.asarray(targets, dtype=np.int64), classes


def _class_order(names: tuple[str, ...], task: Task, root: Path, key: str) -> tuple[str, ...]:
    if task.kind not in ("binary", "multiclass"):
        raise KdtoolError(f"{key} {root}: a class-folder layout gives one class per sample, but task.kind is "
                          f"{task.kind}", "use data.source: csv with one column per label/output")
    expected = 2 if task.kind == "binary" else task.num_outputs
    if len(names) != expected:
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise KdtoolError(f"{key} {root} has {len(names)} class folders ({shown}) but the {task.kind} task "
                          f"expects {expected} (task.num_classes: {task.num_outputs})",
                          "set task.num_classes to the number of class folders")
    if not task.labels:
        return names
    if len(task.labels) != expected or set(task.labels) != set(names):
        raise KdtoolError(f"{key} {root}: folders {list(names)} differ from task.labels {list(task.labels)}",
                          "name the folders exactly as task.labels")
    return tuple(task.labels)


def read_manifest(path: Path, task: Task, key: str = "data.root") -> tuple[list[Path], np.ndarray]:
    """Paths and targets of a CSV manifest (`path` column first; see the module docstring).

    Returns:
        (absolute paths, targets: (N,) int64 for binary/multiclass, (N, K) float32 otherwise).
    """
    path = Path(path)
    if not path.is_file():
        raise KdtoolError(f"{key} {path} does not exist", "point it at a CSV manifest with a header row")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    header = [h.strip() for h in rows[0]] if rows else []
    if not header or header[0] != "path":
        raise KdtoolError(f"{key} {path}: the header must start with 'path' (found {header[:4]})",
                          "write a header row such as path,label")
    cols = _target_columns(header, task, path)
    paths: list[Path] = []
    targets: list[list[float]] = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise KdtoolError(f"{path} row {line - 1} (line {line}) has {len(row)} cells, not {len(header)}",
                              "fix the row")
        p = Path(row[0].strip())
        paths.append(p if p.is_absolute() else path.parent / p)
        targets.append([_parse_target(row[c].strip(), header[c], task, path, line) for c in cols])
    if not paths:
        raise KdtoolError(f"{key} {path} lists no samples", "add rows below the header")
    if task.kind in ("binary", "multiclass"):
        return paths, np.asarray(targets, dtype=np.int64)[:, 0]
    return paths, np.asarray(targets, dtype=np.float32)


def _target_columns(header: list[str], task: Task, path: Path) -> list[int]:
    if task.kind in ("binary", "multiclass"):
        wanted = ["label"]
    elif task.kind == "regression":
        wanted = list(task.outputs or [f"y{i}" for i in range(task.num_outputs)])
    elif task.labels:
        wanted = list(task.labels)
    else:
        wanted = header[1:]
        if len(wanted) != task.num_outputs:
            raise KdtoolError(f"data: {path} has {len(wanted)} label columns but task.num_classes is "
                              f"{task.num_outputs}", "match them, or name the columns in task.labels")
    missing = [w for w in wanted if w not in header]
    if missing:
        raise KdtoolError(f"data: {path} has no column {missing[0]!r} (header: {','.join(header)})",
                          f"a {task.kind} manifest needs columns path,{','.join(wanted)}")
    return [header.index(w) for w in wanted]


def _parse_target(cell: str, column: str, task: Task, path: Path, line: int) -> float:
    where = f"{path} row {line - 1} (line {line}), column {column}"
    if task.labels and task.kind in ("binary", "multiclass") and cell in task.labels:
        return float(task.labels.index(cell))
    try:
        v = float(cell)
    except ValueError:
        names = f" nor one of task.labels {list(task.labels)}" if task.labels else ""
        raise KdtoolError(f"{where}: label {cell!r} is not a number{names}", "fix the label") from None
    if not math.isfinite(v):
        raise KdtoolError(f"{where}: label {cell!r} is NaN or infinite", "fix or drop the row")
    top = {"binary": 1, "multilabel": 1, "multiclass": task.num_outputs - 1}.get(task.kind)
    if top is not None and (v != int(v) or not 0 <= v <= top):
        raise KdtoolError(f"{where}: label {cell!r} is outside 0..{top}",
                          "set task.num_classes to the number of classes" if task.kind == "multiclass"
                          else "use 0 or 1")
    return v


def _file_kind(p: Path) -> str:
    ext = p.suffix.lower()
    return "image" if ext in IMAGE_EXTENSIONS else "audio" if ext in AUDIO_EXTENSIONS else (ext or p.name)


def _kind_of(paths: list[Path], where: Path) -> str:
    kinds = {_file_kind(p) for p in paths}
    if kinds in ({"image"}, {"audio"}):
        return kinds.pop()
    odd = sorted(kinds - {"image", "audio"})
    detail = f"unsupported extension {odd[0]!r}" if odd else "images and audio mixed"
    raise KdtoolError(f"data: {where} lists {detail}",
                      f"use images ({' '.join(sorted(IMAGE_EXTENSIONS))}) or .wav audio, not both")


# ---------------------------------------------------------------- splitting, decoding


def split_indices(targets: np.ndarray, task: Task, val_fraction: float, seed: int = 0,
                  where: str = "data") -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/val split, stratified by class for binary/multiclass (plain when a class is too small)."""
    from sklearn.model_selection import train_test_split

    n = len(targets)
    n_val = int(math.ceil(n * val_fraction))
    if n_val < 1 or n_val >= n:
        raise KdtoolError(f"{where}: data.val_fraction {val_fraction} leaves an empty split of {n} samples",
                          "set data.val_fraction between 0 and 1, or give data.val_root")
    idx = np.arange(n)
    strat = targets if task.kind in ("binary", "multiclass") else None
    try:
        train, val = train_test_split(idx, test_size=n_val, random_state=seed, stratify=strat)
    except ValueError:  # a class with a single sample, or fewer val slots than classes
        train, val = train_test_split(idx, test_size=n_val, random_state=seed)
    return np.sort(train), np.sort(val)


def limit_indices(idx: np.ndarray, limit: int | None, seed: int = 0) -> np.ndarray:
    """At most `limit` of `idx`, a seeded random subset kept in file order."""
    if not limit or len(idx) <= limit:
        return idx
    return np.sort(np.random.default_rng(seed).permutation(idx)[:limit])


def materialise(cfg: DataConfig, decoder: Decoder, splits: list[tuple[list[Path], np.ndarray]],
                where: str) -> list[FileSamples]:
    """Check (and, when small, decode) every file of every split; drop and count the bad ones.

    Raises:
        KdtoolError: more than `data.max_bad_fraction` of the files could not be read.
    """
    total = sum(len(p) for p, _ in splits)
    cache = total * decoder.sample_bytes <= CACHE_BYTES
    bad: list[tuple[Path, str]] = []
    out = []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL/numpy release the GIL
        for paths, targets in splits:
            results = list(pool.map(lambda p: _try(decoder, p, cache), paths))
            keep = [i for i, (_, err) in enumerate(results) if err is None]
            bad += [(paths[i], err) for i, (_, err) in enumerate(results) if err is not None]
            out.append(FileSamples([paths[i] for i in keep], torch.from_numpy(targets[keep]), decoder,
                                   [results[i][0] for i in keep] if cache else None))
    if bad:
        first = ", ".join(str(p) for p, _ in bad[:3]) + (", ..." if len(bad) > 3 else "")
        log.warning("data: skipped %d of %d files that could not be read: %s", len(bad), total, first)
        if len(bad) / total > cfg.max_bad_fraction:
            raise KdtoolError(f"data: {len(bad)} of {total} files in {where} could not be read "
                              f"({len(bad) / total:.1%} > data.max_bad_fraction {cfg.max_bad_fraction}); "
                              f"first: {bad[0][0]} ({bad[0][1]})",
                              "fix or remove the bad files, or raise data.max_bad_fraction")
    return out


def _try(decoder: Decoder, path: Path, full: bool) -> tuple[np.ndarray | None, str | None]:
    if not path.is_file():
        return None, "missing"
    try:
        if full:
            return decoder.decode(path), None
        decoder.check(path)
        return None, None
    except Exception as e:  # any decoder failure (PIL plugins raise OSError, SyntaxError, ValueError...)
        return None, f"{type(e).__name__}: {str(e)[:120]}"


def _build(cfg: DataConfig, task: Task, kind: str, train: tuple[list[Path], np.ndarray],
           val: tuple[list[Path], np.ndarray] | None) -> tuple[FileSamples, FileSamples]:
    """Split (unless a validation set is given), apply `data.limit`, then decode/check the files."""
    paths, targets = train
    if val is None:
        tr, va = split_indices(targets, task, cfg.val_fraction, where=f"data.root {cfg.root}")
        val = ([paths[i] for i in va], targets[va])
        paths, targets = [paths[i] for i in tr], targets[tr]
    tr = limit_indices(np.arange(len(paths)), cfg.limit)
    va = limit_indices(np.arange(len(val[0])), max(2, cfg.limit // 4) if cfg.limit else None)
    splits = [([paths[i] for i in tr], targets[tr]), ([val[0][i] for i in va], val[1][va])]
    where = str(cfg.root) + (f" and {cfg.val_root}" if cfg.val_root else "")
    train_ds, val_ds = materialise(cfg, Decoder.for_config(kind, cfg), splits, where)
    return train_ds, val_ds


def _need_root(cfg: DataConfig) -> Path:
    if cfg.root is None:
        raise KdtoolError(f"data.source {cfg.source} needs data.root", "set it to the folder or CSV file")
    return Path(cfg.root)


def _folder_source(cfg: DataConfig, task: Task, kind: str) -> tuple[FileSamples, FileSamples]:
    paths, targets, classes = list_class_folders(_need_root(cfg), task, kind)
    val = None
    if cfg.val_root is not None:
        vp, vt, _ = list_class_folders(Path(cfg.val_root), task, kind, "data.val_root", classes)
        val = (vp, vt)
    return _build(cfg, task, kind, (paths, targets), val)


@DATA_SOURCES.register("imagefolder")
def imagefolder_source(cfg: DataConfig, task: Task) -> tuple[FileSamples, FileSamples]:
    """Images in root/<class>/ folders (class ids in task.labels order, else sorted folder names)."""
    return _folder_source(cfg, task, "image")


@DATA_SOURCES.register("audiofolder")
def audiofolder_source(cfg: DataConfig, task: Task) -> tuple[FileSamples, FileSamples]:
    """WAV files in root/<class>/ folders, mixed to mono, resampled and padded/cropped to the clip."""
    return _folder_source(cfg, task, "audio")


@DATA_SOURCES.register("csv")
def csv_source(cfg: DataConfig, task: Task) -> tuple[FileSamples, FileSamples]:
    """A CSV manifest: path,label | path,<labels...> | path,<outputs...>; images or WAV files."""
    root = _need_root(cfg)
    paths, targets = read_manifest(root, task)
    kind = _kind_of(paths, root)
    val = None
    if cfg.val_root is not None:
        val = read_manifest(Path(cfg.val_root), task, "data.val_root")
        val_kind = _kind_of(val[0], Path(cfg.val_root))
        if val_kind != kind:
            raise KdtoolError(f"data.val_root {cfg.val_root} lists {val_kind} files "
                              f"but data.root lists {kind}", "use the same kind of samples in both")
    return _build(cfg, task, kind, (paths, targets), val)


def manifest_kind(path: Path) -> str:
    """"image" or "audio": what a CSV manifest's files are (for callers choosing preprocessing)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        paths = [Path(row[0].strip()) for row in list(csv.reader(f))[1:] if row and row[0].strip()]
    return _kind_of(paths, Path(path))
