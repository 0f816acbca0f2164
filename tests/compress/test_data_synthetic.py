"""Generated data: deterministic, the right shapes per task kind, and learnable (not noise)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge

from compress.core.errors import KdtoolError
from compress.core.tasks import Task
from compress.data.loader import build_datasets
from compress.data.synthetic import DEFAULT_NUM_SAMPLES, generate_audio, generate_images
from compress.models.audio import LogMelFrontend
from recipes.schema import DataConfig

VA = Task("regression", 2, outputs=("valence", "arousal"))


def flat(x: torch.Tensor) -> np.ndarray:
    return x.reshape(len(x), -1).numpy()


def test_generators_are_seeded():
    a, ya = generate_images(Task("multiclass", 4), 20, 16, 3, seed=3)
    b, yb = generate_images(Task("multiclass", 4), 20, 16, 3, seed=3)
    c, _ = generate_images(Task("multiclass", 4), 20, 16, 3, seed=4)
    assert torch.equal(a, b) and torch.equal(ya, yb) and not torch.equal(a, c)
    w1, _ = generate_audio(Task("binary", 1), 6, 8000, 4000, seed=0)
    w2, _ = generate_audio(Task("binary", 1), 6, 8000, 4000, seed=0)
    assert torch.equal(w1, w2)


@pytest.mark.parametrize(("task", "shape", "dtype"), [
    (Task("binary", 1), (10,), torch.int64),
    (Task("multiclass", 5), (10,), torch.int64),
    (Task("multilabel", 3), (10, 3), torch.float32),
    (VA, (10, 2), torch.float32),
])
def test_image_shapes_dtypes_and_ranges(task, shape, dtype):
    x, y = generate_images(task, 10, 24, 1)
    assert x.shape == (10, 1, 24, 24) and x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    assert y.shape == shape and y.dtype == dtype
    task.check_targets(y, "synthetic")
    if task.kind == "regression":
        assert y.abs().max() <= 1


def test_sources_split_limit_and_default_size():
    train, val = build_datasets(DataConfig(source="synthetic_images", num_samples=100, image_size=16), VA)
    assert (len(train), len(val)) == (80, 20) and train[0][0].shape == (3, 16, 16)
    cfg = DataConfig(source="synthetic_audio", sample_rate=8000, clip_seconds=0.5, limit=12)
    train, val = build_datasets(cfg, Task("multiclass", 3))
    assert (len(train), len(val)) == (12, 3) and train[0][0].shape == (4000,)
    train, val = build_datasets(DataConfig(source="synthetic_images", image_size=8), Task("binary", 1))
    assert len(train) + len(val) == DEFAULT_NUM_SAMPLES
    assert sorted(val.targets.tolist()).count(1) == len(val) // 2  # stratified


def test_unsupported_targets_are_errors():
    with pytest.raises(KdtoolError, match="keyword classes"):
        generate_audio(VA, 4)
    with pytest.raises(KdtoolError, match="at most 4"):
        generate_images(Task("regression", 5), 4)


def test_images_are_learnable_by_a_linear_model():
    task = Task("multiclass", 10)
    x, y = generate_images(task, 500, 12, 1, seed=0)
    xt, yt = generate_images(task, 200, 12, 1, seed=1)
    acc = LogisticRegression(max_iter=300).fit(flat(x), y.numpy()).score(flat(xt), yt.numpy())
    assert acc > 0.6  # chance 0.1; measured 0.86
    ml = Task("multilabel", 3)
    x, y = generate_images(ml, 300, 12, 1, seed=0)
    xt, yt = generate_images(ml, 100, 12, 1, seed=1)
    accs = [LogisticRegression(max_iter=300).fit(flat(x), y[:, j]).score(flat(xt), yt[:, j])
            for j in range(3)]
    assert min(accs) > 0.85  # chance 0.6 (labels are on 40% of the time)


def test_regression_targets_follow_brightness_and_contrast():
    x, y = generate_images(VA, 300, 16, 3, seed=0)
    xt, yt = generate_images(VA, 100, 16, 3, seed=1)

    def stats(im: torch.Tensor) -> np.ndarray:
        return torch.stack([im.mean((1, 2, 3)), im.std((1, 2, 3))], 1).numpy()

    pred = torch.tensor(Ridge(alpha=1e-3).fit(stats(x), y.numpy()).predict(stats(xt)), dtype=torch.float32)
    m = VA.metrics(pred, yt)
    assert m["ccc_valence"] > 0.9 and m["ccc_arousal"] > 0.8  # measured 0.98 / 0.94


def test_keyword_audio_is_learnable_from_log_mel():
    task = Task("binary", 1)
    x, y = generate_audio(task, 300, 8000, 4000, seed=0)
    feats = LogMelFrontend(8000, n_fft=256, hop=80, n_mels=32)(x).squeeze(1)  # (N, mels, frames)
    f = torch.cat([feats.mean(2), feats.amax(2)], 1).numpy()
    acc = LogisticRegression(max_iter=1000).fit(f[:200], y[:200]).score(f[200:], y[200:])
    assert acc > 0.75  # chance 0.5; a time-blind model cannot tell the down-chirp negatives apart (~0.86)
