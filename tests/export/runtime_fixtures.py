"""A tiny conv net trained on real digits, its calibration and validation samples: the model the
LiteRT and OpenVINO tests export (int8 parity means nothing on the flat logits of random weights)."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from export_fixtures import context, digits
from torch import nn

from compress.core.tasks import Task


def digit_labels(n: int) -> torch.Tensor:
    """Labels of `digits(n)`."""
    from sklearn.datasets import load_digits

    return torch.from_numpy(load_digits().target[:n]).long()


class DigitNet(nn.Module):
    """Two strided convolutions, a 4×4 average pool and a linear layer: keeps where the strokes are
    (a global mean would not), so a few steps fit the digits well."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 32, 32) → (B, 10)
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


@functools.cache
def trained_convnet(n: int = 256, steps: int = 60) -> nn.Module:
    """A `DigitNet` fitted for a few full-batch Adam steps on digits 96 .. 96+n (32 px), held out from
    the parity, calibration and validation digits of `samples`; one per arguments and process (callers
    must not change it)."""
    torch.manual_seed(0)
    model = DigitNet()
    x, y = digits(96 + n)[96:], digit_labels(96 + n)[96:]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


def samples() -> dict[str, torch.Tensor]:
    """Parity inputs and labels (digits 0-15), calibration (16-63) and validation (64-95)."""
    x, y = digits(96), digit_labels(96)
    return {"inputs": x[:16], "labels": y[:16], "calibration": x[16:64], "val_x": x[64:], "val_y": y[64:]}


TASK = Task("multiclass", 10)


def write_png(folder: Path, index: int = 0) -> Path:
    """Digit `index` as a 32 px grayscale PNG (what `kdtool predict` decodes)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    folder.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray((load_digits().images[index] * 255 / 16).astype(np.uint8), mode="L")
    path = folder / f"digit{index}.png"
    image.resize((32, 32), Image.Resampling.BILINEAR).save(path)
    return path


def decoded(artifact: Path, image: Path) -> torch.Tensor:
    """`image` as the model input `kdtool predict` makes of it for `artifact` (its manifest's decoding)."""
    from export.predict import _decoder, _preprocess, decode

    manifest = json.loads((artifact.parent / "manifest.json").read_text())
    raw = decode(image, _decoder(manifest["preprocessing"]))
    return _preprocess(manifest["preprocessing"])(raw[None])


def truncated_copy(folder: Path, into: Path, name: str) -> Path:
    """A copy of an artifact folder whose file `name` is cut to a third of its bytes."""
    shutil.copytree(folder, into)
    data = (into / name).read_bytes()
    (into / name).write_bytes(data[: len(data) // 3])
    return into / name


def export_preset(fmt: str, target: str, out: Path) -> tuple[nn.Module, dict]:
    """`target`'s preset narrowed to `fmt` (fp32 and int8) for the trained conv net, exported once into `out`,
    with calibration and accuracy-control samples: (model, {precision: Artifact})."""
    from export.run import Quantized, export_model

    model, s = trained_convnet(), samples()
    quantized = Quantized(calibration=s["calibration"], validation=(s["val_x"], s["val_y"]), min_retention=0.99)
    artifacts = export_model(model, s["inputs"][:2], out, formats=[fmt], targets=[target], quantized=quantized,
                             inputs=s["inputs"], spec=context(task_spec=TASK, parity_targets=s["labels"]))
    return model, {a.precision: a for a in artifacts}
