"""File loaders on real PNG/WAV files written to tmp_path: counts, shapes, labels, splits and bad files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.core.errors import KdtoolError
from compress.core.tasks import Task
from compress.data import files as data_files
from compress.data.loader import build_datasets
from compress.data.registry import DATA_SOURCES
from compress.data.synthetic import (
    generate_audio,
    generate_images,
    wav_bytes,
    write_audiofolder,
    write_csv_manifest,
    write_imagefolder,
)
from compress.data.wav import read_wav
from recipes.schema import DataConfig

BINARY = Task("binary", 1, labels=("real", "fake"))
FOUR = Task("multiclass", 4)


def cfg(**kw) -> DataConfig:
    return DataConfig(**kw)


def load(source: str, task: Task, **kw):
    return DATA_SOURCES.get(source)(cfg(source=source, **kw), task)


def test_imagefolder_counts_shapes_labels_and_stratified_split(tmp_path):
    root = write_imagefolder(tmp_path / "imgs", BINARY, num_samples=40, image_size=32)
    train, val = load("imagefolder", BINARY, root=root, val_fraction=0.25, image_size=32)
    assert (len(train), len(val)) == (30, 10)
    raw, target, index = train[0]
    assert raw.shape == (3, 32, 32) and raw.dtype == torch.float32 and 0 <= raw.min() and raw.max() <= 1
    assert train.targets.dtype == torch.int64 and index == 0
    assert sorted(val.targets.tolist()) == [0] * 5 + [1] * 5  # stratified
    # labels follow task.labels order (real → 0, fake → 1), not alphabetical (fake < real)
    assert all(int(t) == ("fake" in str(p)) for p, t in zip(train.paths, train.targets, strict=True))
    # the decoded pixels are the generated ones (PNG is lossless; 8-bit rounding only)
    x, _ = generate_images(BINARY, 40, 32, 3)
    for p, (r, _, _) in zip(train.paths[:5], [train[i] for i in range(5)], strict=True):
        assert torch.allclose(r, x[int(p.stem)], atol=0.5 / 255 + 1e-6)


def test_imagefolder_sorted_names_resize_grayscale_limit_and_val_root(tmp_path):
    root = write_imagefolder(tmp_path / "train", FOUR, num_samples=24, image_size=32)
    vroot = write_imagefolder(tmp_path / "val", FOUR, num_samples=8, image_size=32, seed=1)
    train, val = load("imagefolder", FOUR, root=root, val_root=vroot, image_size=16, channels=1)
    assert (len(train), len(val)) == (24, 8)
    assert train[0][0].shape == (1, 16, 16)
    pairs = zip(train.paths, train.targets, strict=True)
    assert {int(t) for p, t in pairs if p.parent.name == "class_02"} == {2}
    train, val = load("imagefolder", FOUR, root=root, limit=8)
    assert (len(train), len(val)) == (8, 2)
    train, val = build_datasets(cfg(source="imagefolder", root=root), FOUR)
    assert len(train) + len(val) == 24


def test_corrupt_and_truncated_files_are_counted_and_thresholded(tmp_path, caplog):
    root = write_imagefolder(tmp_path / "imgs", BINARY, num_samples=40)
    (root / "real" / "zz_garbage.png").write_bytes(b"\x00not an image at all" * 10)
    src = next((root / "fake").glob("*.png")).read_bytes()
    (root / "fake" / "zz_truncated.png").write_bytes(src[: len(src) // 2])
    with caplog.at_level(logging.WARNING, logger="compress.data.files"):
        train, val = load("imagefolder", BINARY, root=root, max_bad_fraction=0.1)
    assert len(train) + len(val) == 40
    assert "skipped 2 of 42" in caplog.text and "zz_" in caplog.text
    with pytest.raises(KdtoolError) as e:
        load("imagefolder", BINARY, root=root, max_bad_fraction=0.01)
    msg = str(e.value)
    assert "2 of 42" in msg and "data.max_bad_fraction" in msg and "zz_" in msg


def test_large_sets_check_headers_and_decode_lazily(tmp_path, monkeypatch):
    monkeypatch.setattr(data_files, "CACHE_BYTES", 0)
    root = write_imagefolder(tmp_path / "imgs", BINARY, num_samples=20)
    (root / "real" / "zz_garbage.jpg").write_bytes(b"garbage")
    train, val = load("imagefolder", BINARY, root=root, max_bad_fraction=0.1)
    assert train.cache is None and len(train) + len(val) == 20
    assert train[3][0].shape == (3, 32, 32)


def test_folder_errors_name_the_problem(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(KdtoolError, match="empty"):
        load("imagefolder", BINARY, root=tmp_path / "empty")
    root = write_imagefolder(tmp_path / "three", Task("multiclass", 3), num_samples=12)
    with pytest.raises(KdtoolError, match=r"has 3 class folders .* expects 4"):
        load("imagefolder", FOUR, root=root)
    with pytest.raises(KdtoolError, match=r"differ from task.labels \['a', 'b', 'c'\]"):
        load("imagefolder", Task("multiclass", 3, labels=("a", "b", "c")), root=root)
    (root / "class_03").mkdir()
    with pytest.raises(KdtoolError, match="class_03 is empty"):
        load("imagefolder", FOUR, root=root)
    with pytest.raises(KdtoolError, match="not a folder"):
        load("imagefolder", FOUR, root=tmp_path / "nope")


def test_csv_classification_with_names_and_missing_file(tmp_path):
    task = Task("multiclass", 3, labels=("cat", "dog", "eel"))
    path = write_csv_manifest(tmp_path / "m.csv", task, num_samples=30, label_names=True)
    assert "dog" in path.read_text()
    train, val = load("csv", task, root=path, val_fraction=0.2)
    assert (len(train), len(val)) == (24, 6) and train.targets.dtype == torch.int64
    _, y = generate_images(task, 30)
    assert torch.equal(train.targets, y[[int(p.stem) for p in train.paths]])
    path.write_text(path.read_text() + "files/missing.png,cat\n")
    train, val = load("csv", task, root=path, max_bad_fraction=0.05)
    assert len(train) + len(val) == 30
    with pytest.raises(KdtoolError, match="missing.png"):
        load("csv", task, root=path, max_bad_fraction=0.0)


def test_csv_regression_two_outputs_and_multilabel(tmp_path):
    task = Task("regression", 2, outputs=("valence", "arousal"))
    path = write_csv_manifest(tmp_path / "va.csv", task, num_samples=20)
    assert path.read_text().splitlines()[0] == "path,valence,arousal"
    train, val = load("csv", task, root=path)
    assert train.targets.shape == (16, 2) and train.targets.dtype == torch.float32
    _, y = generate_images(task, 20)
    assert torch.allclose(train.targets, y[[int(p.stem) for p in train.paths]], atol=1e-5)
    ml = Task("multilabel", 3, labels=("a", "b", "c"))
    train, val = load("csv", ml, root=write_csv_manifest(tmp_path / "ml" / "m.csv", ml, num_samples=20))
    assert train.targets.shape == (16, 3) and set(train.targets.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize(("cell", "match"), [("nan", "NaN"), ("7", "outside 0..3"), ("bird", "not a number")])
def test_csv_bad_label_names_file_and_row(tmp_path, cell, match):
    path = write_csv_manifest(tmp_path / "m.csv", FOUR, num_samples=4)
    lines = path.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0] + "," + cell
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(KdtoolError, match=rf"m\.csv row 2 \(line 3\).*{match}"):
        load("csv", FOUR, root=path)


def test_csv_regression_missing_column(tmp_path):
    path = write_csv_manifest(tmp_path / "m.csv", Task("regression", 1, outputs=("valence",)), num_samples=4)
    with pytest.raises(KdtoolError, match="no column 'arousal'"):
        load("csv", Task("regression", 2, outputs=("valence", "arousal")), root=path)


def test_audiofolder_decodes_pcm16_exactly(tmp_path):
    task = Task("binary", 2)
    root = write_audiofolder(tmp_path / "wav", task, num_samples=16, sample_rate=8000, clip_seconds=0.5)
    train, val = load("audiofolder", task, root=root, sample_rate=8000, clip_seconds=0.5, val_fraction=0.25)
    assert (len(train), len(val)) == (12, 4)
    raw, _, _ = train[0]
    assert raw.shape == (4000,) and raw.dtype == torch.float32
    x, _ = generate_audio(task, 16, 8000, 4000)
    assert torch.allclose(raw, x[int(train.paths[0].stem)], atol=1.0 / 32767)


def test_audio_resampled_mixed_to_mono_and_fitted(tmp_path):
    t = np.arange(8000) / 8000.0  # 1 s at 8 kHz, 440 Hz tone, stereo with a silent channel
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.zeros_like(t)], axis=1) * 0.5
    for c in ("a", "b"):
        (tmp_path / "wav" / c).mkdir(parents=True)
        for i in range(4):
            (tmp_path / "wav" / c / f"{i}.wav").write_bytes(wav_bytes(stereo, 8000, "float32"))
    train, _ = load("audiofolder", Task("binary", 1), root=tmp_path / "wav", sample_rate=16000,
                    clip_seconds=1.5)
    raw = train[0][0].numpy()
    assert raw.shape == (24000,) and np.all(raw[16001:] == 0)  # 1 s of audio at 16 kHz, zero-padded to 1.5 s
    spectrum = np.abs(np.fft.rfft(raw[:16000]))
    assert abs(np.argmax(spectrum) - 440) <= 1  # 1 s at 16 kHz: one FFT bin per Hz
    assert abs(raw[:16000].max() - 0.25) < 0.01  # mono mix-down halves the tone


@pytest.mark.parametrize("encoding", ["pcm16", "pcm32", "float32"])
def test_read_wav_encodings_and_truncation(tmp_path, encoding):
    x = np.linspace(-0.9, 0.9, 1001, dtype=np.float32)
    p = tmp_path / "a.wav"
    p.write_bytes(wav_bytes(x, 22050, encoding))
    y, rate = read_wav(p)
    assert rate == 22050 and y.shape == (1001, 1)
    assert np.abs(y[:, 0] - x).max() < {"pcm16": 1e-4, "pcm32": 1e-7, "float32": 0}[encoding] + 1e-9
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated"):
        read_wav(p)


def test_csv_of_audio_and_truncated_wav_counted(tmp_path):
    task = Task("binary", 1)
    path = write_csv_manifest(tmp_path / "a.csv", task, num_samples=20, kind="audio", sample_rate=8000,
                              clip_seconds=0.25)
    victim = Path(tmp_path / "files" / "00003.wav")
    victim.write_bytes(victim.read_bytes()[:200])
    train, val = load("csv", task, root=path, sample_rate=8000, clip_seconds=0.25, max_bad_fraction=0.1)
    assert len(train) + len(val) == 19 and train[0][0].shape == (2000,)
    assert data_files.manifest_kind(path) == "audio"
    assert victim not in train.paths + val.paths
