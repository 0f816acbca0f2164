"""Tiny audio data and models for the Python API tests: clips of different lengths, padded by a collate_fn."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import Dataset

CLIP = 480
"""Samples every clip is padded to by `pad_collate` (the clips themselves are 320..480 long)."""


class Clips(Dataset):
    """Synthetic keyword clips of different lengths: class 1 is a high tone, class 0 a low one (plus noise).

    Args:
        n: number of clips (classes alternate, so the set is balanced).
        seed: the draws' seed.
        as_dict: items are `{"audio": clip, "target": label}` instead of `(clip, label)`.
    """

    def __init__(self, n: int, seed: int = 0, as_dict: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 2
        self.clips = []
        for label in self.labels.tolist():
            length = int(torch.randint(320, CLIP + 1, (1,), generator=g))
            freq = 0.25 if label else 0.05
            t = torch.arange(length, dtype=torch.float32)
            phase = float(torch.rand(1, generator=g)) * 2 * math.pi
            self.clips.append(torch.sin(freq * t + phase) + 0.3 * torch.randn(length, generator=g))
        self.as_dict = as_dict
        self.served: list[int] = []  # labels handed out, in order (what a sampler really drew)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int):
        self.served.append(int(self.labels[i]))
        if self.as_dict:
            return {"audio": self.clips[i], "target": self.labels[i]}
        return self.clips[i], self.labels[i]


def pad_collate(items: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(clips zero-padded to `CLIP` samples (N, CLIP), labels (N,), true lengths (N,)): the wake-word way."""
    clips, labels = zip(*items, strict=True)
    out = torch.zeros(len(clips), CLIP)
    for row, clip in zip(out, clips, strict=True):
        row[: len(clip)] = clip
    return out, torch.stack(labels), torch.tensor([len(c) for c in clips])


class TinyAudioNet(nn.Module):
    """Raw waveform (N, samples) → conv → global pool → 2 logits."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, width, 9, stride=2)
        self.conv2 = nn.Conv1d(width, width, 5, stride=2)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.conv(x.unsqueeze(1)))))  # (N, width, L')
        return self.fc(self.pool(h).flatten(1))  # (N, 2)
