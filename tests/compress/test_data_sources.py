"""Every registered data source builds datasets, tested for free over the registry (timm's pattern)."""

from __future__ import annotations

import wave

import pytest
import torch

from compress.core.tasks import Task
from export.names import registries
from recipes.schema import DataConfig

REG = registries()
GENERATED = {"synthetic_images": {}, "synthetic_audio": {"clip_seconds": 0.25, "sample_rate": 8000}}
"""Data sources that need no files; the file-backed ones get generated files below."""


def _write_files(source: str, root) -> dict:
    """Generated files for the file-backed sources: two classes of 8x8 PNGs, a CSV of them, WAVs."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(5):
            if source == "audiofolder":
                with wave.open(str(root / label / f"{i}.wav"), "wb") as w:  # 0.5 s of 16-bit noise at 8 kHz
                    w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
                    w.writeframes(rng.integers(-8000, 8000, 4000, dtype=np.int16).tobytes())
            else:
                path = root / label / f"{i}.png"
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)
                rows.append(f"{path},{'ab'.index(label)}")
    if source == "csv":
        (root / "data.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
        return {"root": root / "data.csv"}
    return {"root": root, **({"clip_seconds": 0.5, "sample_rate": 8000} if source == "audiofolder" else {})}


@pytest.mark.parametrize("source", sorted(REG["data source"]))
def test_every_data_source_builds_datasets(source, tmp_path):
    extra = GENERATED[source] if source in GENERATED else {} if source == "digits" else _write_files(source, tmp_path)
    cfg = DataConfig(source=source, image_size=8, num_samples=20, limit=20, val_fraction=0.4, **extra)
    train, val = REG["data source"].get(source)(cfg, Task("multiclass", 2 if source not in ("digits",) else 10))
    assert len(train) > 0 and len(val) > 0
    raw, target, index = train[0]
    assert isinstance(raw, torch.Tensor) and torch.isfinite(raw).all()
