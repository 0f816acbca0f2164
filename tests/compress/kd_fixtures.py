"""Tiny models and real digits data shared by the trainer tests (resume, DDP, teacher cache)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from compress.core.tasks import Task
from compress.data.loader import digits_source, make_loader
from compress.models.build import BuiltModel, Preprocess
from recipes.schema import AugmentConfig, CacheConfig, DataConfig, DistillConfig, TrainConfig

TASK = Task("multiclass", 10)
PRE = Preprocess(kind="image", input_size=16, channels=1, mean=(0.5,), std=(0.5,))


def digits(limit: int = 128, crop_pad: int = 2, hflip: bool = False, batch_size: int = 32):
    """scikit-learn digits at 16 px, 1 channel: (data config, train (limit), val (limit // 4))."""
    cfg = DataConfig(source="digits", image_size=16, channels=1, limit=limit, batch_size=batch_size,
                     augment=AugmentConfig(crop_pad=crop_pad, hflip=hflip))
    train, val = digits_source(cfg, TASK)
    return cfg, train, val


def tiny_net(seed: int, batchnorm: bool = False, dropout: float = 0.0, width: int = 8) -> BuiltModel:
    """A two-conv classifier for 16 px digits (~4 k params at width 8); BatchNorm and dropout optional."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(1, width, 3, padding=1)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(width))
    layers += [nn.ReLU(), nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
               nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Dropout(dropout), nn.Linear(32 * width, 10)]
    return BuiltModel(nn.Sequential(*layers), PRE, "tiny")


def train_cfg(epochs: int = 3, **kw) -> TrainConfig:
    """AdamW + one-cycle, batch 32 unless overridden."""
    return TrainConfig(**{"epochs": epochs, "lr": 0.01, "weight_decay": 0.01, "scheduler": "onecycle",
                          "batch_size": 32, "seed": 0, **kw})


def distill_cfg(cache: bool = False, views: int = 2, top_k: int | None = None,
                dtype: str = "float32") -> DistillConfig:
    """Hinton KD, T=4, alpha 0.5, optionally with the teacher-output cache."""
    return DistillConfig(temperature=4.0, alpha=0.5,
                         cache=CacheConfig(enabled=cache, views=views, top_k=top_k, dtype=dtype))


def model_tensors(folder: Path, name: str = "last.safetensors") -> dict[str, torch.Tensor]:
    """The model weights in a checkpoint file (training state or bare weights)."""
    t = load_file(str(folder / name))
    if any(k.startswith("model.") for k in t):
        return {k[6:]: v for k, v in t.items() if k.startswith("model.")}
    return t


def without_timing(history: list[dict]) -> list[dict]:
    """History records minus wall-clock fields (everything else must replay exactly)."""
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in history]


def train_on_labels(model: torch.nn.Module, loader, epochs: int, lr: float, preprocess=None,
                    task=None) -> torch.nn.Module:
    """A few epochs of plain AdamW on hard labels (a trained model for quantization tests); returns it in eval."""
    preprocess, task = preprocess or PRE, task or TASK
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(epochs):
        for raw, y, _ in loader:
            loss = task.hard_loss(model(preprocess(raw)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def digit_loaders(image_size: int = 16):
    """(train, val) loaders over all 1,797 digits at `image_size`, 1 channel: batch 64 shuffled, 128 in order."""
    from types import SimpleNamespace

    cfg = SimpleNamespace(image_size=image_size, channels=1, val_fraction=0.2, limit=None)
    train, val = digits_source(cfg, TASK)
    return make_loader(train, 64, True, seed=0), make_loader(val, 128, False, seed=0)
