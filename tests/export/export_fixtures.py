"""Models and inputs shared by the export tests (imported by conftest.py and the test files)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from export.registry import ExportContext

LABELS = tuple(str(i) for i in range(10))


def tiny_student() -> nn.Module:
    """timm mobilenetv3_small_050, 1 channel, 10 classes, fixed random weights."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model("mobilenetv3_small_050", pretrained=False, in_chans=1, num_classes=10).eval()


class TinyConvNet(nn.Module):
    """A 3-layer conv net: the fast model for the int8 and runtime tests."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def tiny_convnet() -> nn.Module:
    torch.manual_seed(0)
    return TinyConvNet().eval()


def digits(n: int = 8) -> torch.Tensor:
    """Real inputs: scikit-learn's handwritten digits, resized to 32 px, normalised like the student."""
    from sklearn.datasets import load_digits

    x = torch.from_numpy(load_digits().images[:n].astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8)
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    return (x - 0.5) / 0.5


def context(**kw) -> ExportContext:
    base = dict(name="student_kd", labels=LABELS, output_names=("logits",),
                preprocess={"kind": "image", "input_size": 32, "channels": 1, "mean": [0.5], "std": [0.5]},
                output_meaning="logits (N, 10); softmax for probabilities", max_batch=64)
    base.update(kw)
    return ExportContext(**base)
