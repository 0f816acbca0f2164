"""Every registered exporter, runtime and data source, tested for free (timm's pattern), and recipe
names checked against the registries right after loading (exit code 2, the known names listed)."""

from __future__ import annotations

import wave

import pytest
import torch

from compress.core.errors import EXIT_BAD_INPUT, KdtoolError
from compress.core.tasks import Task
from export.names import check_names, registries
from recipes.schema import DataConfig, Recipe

REG = registries()
GENERATED = {"synthetic_images": {}, "synthetic_audio": {"clip_seconds": 0.25, "sample_rate": 8000}}
"""Data sources that need no files; the file-backed ones get generated files below."""


@pytest.mark.parametrize("name", sorted(REG["format"]))
def test_every_exporter_has_a_registered_runtime(name):
    exporter = REG["format"].get(name)()
    assert exporter.runtime in REG["runtime"], f"{name} exports for unregistered runtime {exporter.runtime!r}"


@pytest.mark.parametrize("name", sorted(REG["runtime"]))
def test_every_runtime_says_whether_it_runs_here(name):
    reason = REG["runtime"].get(name)().available()
    assert reason is None or (isinstance(reason, str) and reason.strip()), f"{name}.available() gave {reason!r}"


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


def _recipe(**sections) -> Recipe:
    return Recipe(name="names", teacher={"arch": "resnet10t", "pretrained": True}, student={"arch": "resnet10t"},
                  **sections)


@pytest.mark.parametrize(("sections", "key"), [
    ({"data": {"source": "digitz"}}, "data.source: unknown data source 'digitz'"),
    ({"distill": {"soft_loss": "kll"}}, "distill.soft_loss: unknown KD loss 'kll'"),
    ({"distill": {"terms": [{"name": "fitnet"}, {"name": "atention"}]}}, "distill.terms[1].name: unknown KD loss"),
    ({"export": {"formats": ["onnx", "tflite"]}}, "export.formats[1]: unknown exporter 'tflite'"),
])
def test_unknown_names_fail_after_loading_listing_the_known(sections, key):
    with pytest.raises(KdtoolError) as e:
        check_names(_recipe(**sections))
    assert str(e.value).startswith(key) and e.value.exit_code == EXIT_BAD_INPUT
    assert "known:" in e.value.hint


def test_registered_names_pass():
    check_names(_recipe(data={"source": "synthetic_images"}, distill={"soft_loss": "none", "terms": [{"name": "rkd"}]},
                        export={"formats": sorted(REG["format"])}))
