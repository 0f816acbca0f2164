"""Training with a primary metric that is undefined on the validation split: null, never NaN, no crash."""

from __future__ import annotations

import math

from torch import nn
from torch.utils.data import Dataset

from compress.core.tasks import Task
from compress.distill.trainer import fit
from tests.compress.kd_fixtures import digits, tiny_net, train_cfg


class _Binary(Dataset):
    """Digits as "is it a zero?", optionally only the samples of one answer."""

    def __init__(self, base: Dataset, only: int | None = None) -> None:
        self.base = base
        self.keep = [i for i in range(len(base)) if only is None or int(base[i][1] == 0) == only]

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, i: int):
        raw, target, _ = self.base[self.keep[i]]
        return raw, int(target == 0), i


def test_auc_undefined_on_a_one_class_validation_split_is_null_and_training_goes_on(tmp_path):
    data_cfg, train, val = digits(limit=128, crop_pad=0)
    student = tiny_net(seed=0)
    student.module[-1] = nn.Linear(student.module[-1].in_features, 2)  # two logits: binary
    result = fit(student, _Binary(train), _Binary(val, only=0), Task("binary", 2), train_cfg(epochs=2),
                 tmp_path, data_cfg=data_cfg)
    assert [h["val_auc"] for h in result.history] == [None, None]  # was NaN
    assert all(v is None or math.isfinite(v) for h in result.history for k, v in h.items() if k.startswith("val_"))
    assert (tmp_path / "best.safetensors").exists() and result.best_epoch == 2  # the latest weights are kept
