"""Generated data with learnable structure, in memory or written to disk as real PNG/WAV files.

- `synthetic_images`: per class, a Gaussian blob at a class position on a circle plus an oriented
  grating at a class angle (random phase, jitter, contrast, colour gain and noise). Multilabel: one
  blob per active label. Regression (up to 4 outputs in [-1, 1]): output 0 sets the brightness
  (valence), 1 the texture contrast (arousal), 2/3 a blob's x/y position — smooth functions of image
  statistics, so a model can learn them and CCC is meaningful.
- `synthetic_audio`: keyword spotting. Class 0 is "negative" (noise, sometimes a distractor tone or
  a downward chirp in a keyword's band); class k ≥ 1 is an upward chirp in band k at a random offset
  in noise. Binary tasks: negative vs one keyword.

Everything is seeded: the same config gives the same samples. The `write_*` helpers put the same
samples on disk so tests exercise the real file loaders.
"""

from __future__ import annotations

import io
import math
import struct
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from compress.core.atomic import write_bytes, write_text
from compress.core.errors import KdtoolError
from compress.core.tasks import Task
from compress.data.files import limit_indices, split_indices
from compress.data.registry import DATA_SOURCES, TensorSamples
from recipes.schema import DataConfig

DEFAULT_NUM_SAMPLES = 400


def _num_classes(task: Task) -> int:
    return 2 if task.kind == "binary" else task.num_outputs


def _targets_tensor(task: Task, y: np.ndarray) -> torch.Tensor:
    if task.kind in ("binary", "multiclass"):
        return torch.from_numpy(y.astype(np.int64))
    return torch.from_numpy(y.astype(np.float32))


def generate_images(task: Task, num_samples: int, image_size: int = 32, channels: int = 3, seed: int = 0,
                    noise: float = 0.08) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with learnable class (or value) structure.

    Returns:
        (raw float32 (N, C, H, W) in [0, 1], targets: (N,) int64 for binary/multiclass,
        (N, K) float32 0/1 for multilabel, (N, K) float32 in [-1, 1] for regression).
    """
    rng = np.random.default_rng(seed)
    g = np.linspace(-1, 1, image_size, dtype=np.float32)
    yy, xx = np.meshgrid(g, g, indexing="ij")  # (H, W)

    def blob(cx: float, cy: float, sigma: float = 0.3) -> np.ndarray:
        return np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))

    def grating(angle: float, cycles: float = 2.0) -> np.ndarray:
        phase = rng.uniform(0, 2 * np.pi)
        return np.sin(np.pi * cycles * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)

    k = _num_classes(task)
    if task.kind == "regression" and k > 4:
        raise KdtoolError(f"data.source synthetic_images makes at most 4 regression outputs, not {k}",
                          "use task.num_classes <= 4, or your own data")
    spots = [(0.5 * math.cos(2 * math.pi * c / k), 0.5 * math.sin(2 * math.pi * c / k)) for c in range(k)]
    x = np.empty((num_samples, channels, image_size, image_size), np.float32)
    if task.kind in ("binary", "multiclass"):
        y = np.arange(num_samples) % k
        rng.shuffle(y)
    elif task.kind == "multilabel":
        y = (rng.random((num_samples, k)) < 0.4).astype(np.float32)
    else:
        y = rng.uniform(-1, 1, (num_samples, k)).astype(np.float32)
    for i in range(num_samples):
        if task.kind == "regression":
            t = y[i]
            img = np.full_like(xx, 0.5 + 0.2 * t[0])
            contrast = 0.2 * (t[1] + 1) / 2 if k > 1 else 0.05
            img += contrast * grating(rng.uniform(0, np.pi), cycles=3.0)
            cx = 0.6 * t[2] if k > 2 else rng.uniform(-0.6, 0.6)
            cy = 0.6 * t[3] if k > 3 else rng.uniform(-0.6, 0.6)
            img += 0.15 * blob(cx, cy, 0.2)
        else:
            active = [int(y[i])] if task.kind != "multilabel" else np.flatnonzero(y[i]).tolist()
            img = np.full_like(xx, 0.35)
            for c in active:
                j = rng.normal(0, 0.08, 2)
                img += rng.uniform(0.25, 0.4) * blob(spots[c][0] + j[0], spots[c][1] + j[1])
                img += rng.uniform(0.05, 0.12) * grating(math.pi * c / k)
        gain = 1 + rng.normal(0, 0.08, (channels, 1, 1)) if channels > 1 else np.ones((1, 1, 1))
        x[i] = img[None] * gain + rng.normal(0, noise, (channels, image_size, image_size))
    return torch.from_numpy(x.clip(0, 1)), _targets_tensor(task, y)


def generate_audio(task: Task, num_samples: int, sample_rate: int = 16000, clip_samples: int = 16000,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Keyword-spotting clips: class 0 negative, class k an upward chirp in frequency band k.

    Returns:
        (raw float32 (N, clip_samples) in [-1, 1], targets (N,) int64).
    """
    if task.kind not in ("binary", "multiclass"):
        raise KdtoolError(f"data.source synthetic_audio makes keyword classes, not {task.kind} targets",
                          "use task.kind binary or multiclass")
    rng = np.random.default_rng(seed)
    k = _num_classes(task)
    lo, hi = 300.0, min(4000.0, 0.4 * sample_rate)
    width = (hi - lo) / max(1, k - 1)
    dur = min(int(0.3 * sample_rate), clip_samples // 2)
    t = np.arange(dur) / sample_rate
    env = np.hanning(dur)

    def chirp(f0: float, f1: float) -> np.ndarray:
        return np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * t[-1]))) * env

    y = np.arange(num_samples) % k
    rng.shuffle(y)
    x = rng.normal(0, 1, (num_samples, clip_samples)) * rng.uniform(0.02, 0.06, (num_samples, 1))
    for i, c in enumerate(y):
        band = lo + (c - 1 if c else rng.integers(0, k - 1)) * width
        f0, f1 = band + 0.1 * width, band + 0.9 * width
        if c:
            event = chirp(f0, f1)
        else:
            kind = rng.integers(0, 3)
            if kind == 0:
                continue  # noise only
            tone = rng.uniform(lo, hi)
            event = chirp(f1, f0) if kind == 1 else chirp(tone, tone)
        start = rng.integers(0, clip_samples - dur + 1)
        x[i, start:start + dur] += rng.uniform(0.2, 0.5) * event
    return torch.from_numpy(x.clip(-1, 1).astype(np.float32)), _targets_tensor(task, y)


def _split(cfg: DataConfig, task: Task, x: torch.Tensor, y: torch.Tensor) -> tuple[Dataset, Dataset]:
    tr, va = split_indices(y.numpy(), task, cfg.val_fraction, where=f"data.source {cfg.source}")
    tr = limit_indices(tr, cfg.limit)
    va = limit_indices(va, max(2, cfg.limit // 4) if cfg.limit else None)
    return TensorSamples(x[tr], y[tr]), TensorSamples(x[va], y[va])


@DATA_SOURCES.register("synthetic_images")
def synthetic_images_source(cfg: DataConfig, task: Task) -> tuple[Dataset, Dataset]:
    """Generated images (class blobs and gratings, or regression by brightness/contrast); offline."""
    x, y = generate_images(task, cfg.num_samples or DEFAULT_NUM_SAMPLES, cfg.image_size, cfg.channels)
    return _split(cfg, task, x, y)


@DATA_SOURCES.register("synthetic_audio")
def synthetic_audio_source(cfg: DataConfig, task: Task) -> tuple[Dataset, Dataset]:
    """Generated keyword-spotting clips (chirps in noise vs negatives); offline."""
    n = int(round(cfg.sample_rate * cfg.clip_seconds))
    x, y = generate_audio(task, cfg.num_samples or DEFAULT_NUM_SAMPLES, cfg.sample_rate, n)
    return _split(cfg, task, x, y)


# ---------------------------------------------------------------- on disk


def wav_bytes(wave: np.ndarray, sample_rate: int, encoding: str = "pcm16") -> bytes:
    """A WAV file's bytes: mono (samples,) or (samples, channels) float in [-1, 1].

    Args:
        encoding: "pcm16", "pcm32" or "float32" (IEEE float, which the stdlib `wave` cannot write).
    """
    a = np.asarray(wave, np.float32)
    a = a[:, None] if a.ndim == 1 else a
    if encoding == "float32":
        data, tag, bits = a.astype("<f4").tobytes(), 3, 32
    elif encoding in ("pcm16", "pcm32"):
        bits = int(encoding[3:])
        scale = 2 ** (bits - 1) - 1
        data, tag = (np.clip(a, -1, 1) * scale).round().astype(f"<i{bits // 8}").tobytes(), 1
    else:
        raise ValueError(f"unknown WAV encoding {encoding!r}")
    ch, block = a.shape[1], a.shape[1] * bits // 8
    fmt = struct.pack("<HHIIHH", tag, ch, sample_rate, sample_rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _png_bytes(img: torch.Tensor) -> bytes:
    from PIL import Image

    a = (img.numpy() * 255).round().astype(np.uint8)
    pil = Image.fromarray(a[0]) if a.shape[0] == 1 else Image.fromarray(a.transpose(1, 2, 0))
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def _class_names(task: Task) -> list[str]:
    k = _num_classes(task)
    if task.labels and len(task.labels) == k:
        return list(task.labels)
    return [f"class_{c:02d}" for c in range(k)]


def write_imagefolder(root: str | Path, task: Task, num_samples: int = 40, image_size: int = 32,
                      channels: int = 3, seed: int = 0) -> Path:
    """Write `generate_images` as PNGs in root/<class name>/<index>.png (names: task.labels or class_NN)."""
    root = Path(root)
    x, y = generate_images(task, num_samples, image_size, channels, seed)
    names = _class_names(task)
    for i, (img, c) in enumerate(zip(x, y.tolist(), strict=True)):
        write_bytes(root / names[c] / f"{i:05d}.png", _png_bytes(img))
    return root


def write_audiofolder(root: str | Path, task: Task, num_samples: int = 40, sample_rate: int = 16000,
                      clip_seconds: float = 1.0, seed: int = 0, encoding: str = "pcm16") -> Path:
    """Write `generate_audio` as WAV files in root/<class name>/<index>.wav."""
    root = Path(root)
    x, y = generate_audio(task, num_samples, sample_rate, int(round(sample_rate * clip_seconds)), seed)
    names = _class_names(task)
    for i, (clip, c) in enumerate(zip(x, y.tolist(), strict=True)):
        write_bytes(root / names[c] / f"{i:05d}.wav", wav_bytes(clip.numpy(), sample_rate, encoding))
    return root


def write_csv_manifest(path: str | Path, task: Task, num_samples: int = 40, kind: str = "image",
                       image_size: int = 32, channels: int = 3, sample_rate: int = 16000,
                       clip_seconds: float = 1.0, seed: int = 0, label_names: bool = False) -> Path:
    """Write generated samples to `<csv folder>/files/` and a manifest CSV naming them (relative paths).

    Columns: `path,label` (binary/multiclass; class names from task.labels when `label_names`),
    `path,<task.labels or label_NN>` (multilabel), `path,<task.outputs>` (regression).
    """
    path = Path(path)
    if kind == "image":
        x, y = generate_images(task, num_samples, image_size, channels, seed)
    else:
        x, y = generate_audio(task, num_samples, sample_rate, int(round(sample_rate * clip_seconds)), seed)
    k = _num_classes(task)
    if task.kind in ("binary", "multiclass"):
        columns = ["label"]
    elif task.kind == "multilabel":
        columns = list(task.labels or [f"label_{c:02d}" for c in range(k)])
    else:
        columns = list(task.outputs or [f"y{c}" for c in range(k)])
    lines = [",".join(["path", *columns])]
    for i in range(num_samples):
        rel = f"files/{i:05d}." + ("png" if kind == "image" else "wav")
        data = _png_bytes(x[i]) if kind == "image" else wav_bytes(x[i].numpy(), sample_rate)
        write_bytes(path.parent / rel, data)
        if task.kind in ("binary", "multiclass"):
            c = int(y[i])
            values = [task.labels[c] if label_names and task.labels else str(c)]
        else:
            values = [f"{float(v):g}" for v in y[i].reshape(-1).tolist()]
        lines.append(",".join([rel, *values]))
    write_text(path, "\n".join(lines) + "\n")
    return path
