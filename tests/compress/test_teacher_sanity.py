"""The teacher check before distilling, and the student-size warning of the dry run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from compress.core.tasks import Task
from compress.distill.sanity import gflops, size_warning, teacher_warnings


@pytest.fixture(scope="module")
def real_vs_fake() -> tuple[torch.Tensor, torch.Tensor]:
    """A binary teacher on digits ("fake" = digit >= 5) and its validation logits (one logit)."""
    x, y = load_digits(return_X_y=True)
    target = (y >= 5).astype(int)
    fit = LogisticRegression(max_iter=500).fit(x[:300], target[:300])
    logits = torch.as_tensor(fit.decision_function(x[300:500]), dtype=torch.float32)[:, None]
    return logits, torch.as_tensor(target[300:500])


def test_a_good_teacher_raises_no_warning(real_vs_fake):
    logits, targets = real_vs_fake
    assert teacher_warnings(Task("binary", 1, labels=("real", "fake")), logits, targets) == []


def test_teacher_with_swapped_label_order_is_named_with_the_fix(real_vs_fake):
    logits, targets = real_vs_fake
    task = Task("binary", 1, labels=("real", "fake"))
    [warning] = teacher_warnings(task, -logits, targets)  # a checkpoint trained as [fake, real]
    assert warning.startswith("teacher auc 0.0") and "at or below chance (0.5000)" in warning
    assert "with the labels swapped (['fake', 'real']) the teacher scores auc 0.9" in warning
    two = torch.cat([logits, -logits], 1)  # the two-logit form, its columns in the other order
    assert "labels swapped" in teacher_warnings(Task("binary", 2), two, targets)[0]


def test_multiclass_teacher_at_chance_names_checkpoint_and_labels():
    targets = torch.as_tensor(load_digits(return_X_y=True)[1][:100])
    constant = torch.zeros(100, 10)
    constant[:, 3] = 1.0  # "always 3"
    [warning] = teacher_warnings(Task("multiclass", 10), constant, targets)
    assert "accuracy" in warning and "teacher.checkpoint" in warning and "task.labels" in warning


def test_student_as_large_as_the_teacher_is_flagged():
    # the deepfake recipe: MobileViTv2-2.0 (17.4 M, 14.3 GFLOPs) against EfficientNet-B4 (17.5 M, 8.8)
    warning = size_warning((17_500_000, 8.8), (17_400_000, 14.3))
    assert warning and "params (M) 17.4 vs 17.5" in warning and "GFLOPs 14.3 vs 8.8" in warning
    assert size_warning((11_700_000, 1.8), (2_500_000, 0.06)) is None


def test_gflops_counts_a_linear_layer():
    layer = torch.nn.Linear(64, 10)
    assert gflops(layer, torch.zeros(4, 64)) == pytest.approx(2 * 64 * 10 / 1e9)
    assert np.isfinite(gflops(layer, torch.zeros(1, 64)))


def test_dry_run_says_when_the_student_is_as_large_as_the_teacher(tmp_path):
    from compress.context import Context
    from compress.core.runfolder import RunFolder
    from compress.distill.dryrun import dry_run
    from recipes.schema import Recipe

    def recipe(student_channels):
        return Recipe.model_validate({
            "name": "t", "task": {"kind": "multiclass", "num_classes": 10},
            "data": {"source": "digits", "image_size": 16, "channels": 1},
            "teacher": {"arch": "resnet10t", "kwargs": {"channels": [16, 32, 64, 128]}, "train": {"epochs": 1}},
            "student": {"arch": "resnet10t", "kwargs": {"channels": student_channels}}})

    same = dry_run(Context(recipe([16, 32, 64, 128]), RunFolder(tmp_path)))
    assert same["warning"].startswith("the student is about as large as the teacher (params (M)")
    assert "warning" not in dry_run(Context(recipe([4, 8, 16, 32]), RunFolder(tmp_path)))
