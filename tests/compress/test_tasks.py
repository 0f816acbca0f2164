"""Task metrics that tell the truth: Lin's CCC, multilabel AUC over defined labels, no NaN, retention per kind."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.datasets import load_digits

from compress.core.tasks import Task, lin_ccc, retention, retention_with_reason


def test_ccc_of_a_constant_prediction_is_zero_not_nan():
    targets = torch.linspace(-1, 1, 30).reshape(-1, 1)
    metrics, notes = Task("regression", 1).score(torch.full((30, 1), 0.3), targets)
    assert metrics["ccc"] == 0.0 and metrics["ccc_y0"] == 0.0  # was NaN
    assert all(v is None or math.isfinite(v) for v in metrics.values()) and notes == {}


def test_ccc_uses_lin_population_moments():
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(30, generator=gen)
    x = 0.8 * y + 0.3 * torch.randn(30, generator=gen) + 0.2
    n = 30
    mx, my = x.double().mean(), y.double().mean()
    cov = ((x.double() - mx) * (y.double() - my)).sum() / n
    lin = 2 * cov / (x.double().var(unbiased=False) + y.double().var(unbiased=False) + (mx - my) ** 2)
    assert lin_ccc(x, y) == pytest.approx(float(lin), abs=1e-12)
    sample = 2 * cov * n / (n - 1) / (x.double().var() + y.double().var() + (mx - my) ** 2)
    assert abs(lin_ccc(x, y) - float(sample)) > 1e-5  # the (n-1) form kdtool used before differs


def test_ccc_undefined_only_when_both_sides_constant():
    metrics, notes = Task("regression", 1).score(torch.ones(10, 1), torch.ones(10, 1))
    assert metrics["ccc"] is None and "constant" in notes["ccc"]


def test_multilabel_auc_averages_only_defined_labels():
    targets = torch.tensor([[1, 0, 0], [0, 0, 1], [1, 0, 0], [0, 0, 1], [1, 0, 1], [0, 0, 0]])
    scores = targets.float() * 4 - 2  # perfect ranking on labels 0 and 2; label 1 is all-negative
    metrics, notes = Task("multilabel", 3).score(scores, targets)
    assert metrics["auc"] == pytest.approx(1.0)  # was 2/3: the undefined label counted as 0
    assert "2 of 3 labels" in notes["auc"]


def test_binary_auc_with_one_class_is_null_with_reason():
    metrics, notes = Task("binary", 1).score(torch.randn(8, 1), torch.ones(8))
    assert metrics["auc"] is None and "every validation label is 1" in notes["auc"]


def test_retention_per_metric_kind():
    # signed: teacher CCC -0.1, student -0.3 printed 300 %; teacher -0.37 printed -15 %
    assert retention_with_reason("ccc", -0.3, -0.1)[0] is None
    assert retention("ccc", 0.055, -0.37) is None
    assert retention("ccc", 0.45, 0.5) == pytest.approx(0.9)
    # a teacher at AUC 0.075 and a student at 0.785 printed 1040 %
    value, why = retention_with_reason("auc", 0.785, 0.075)
    assert value is None and "chance" in why
    # accuracy needs the teacher above 1/C (the caller's chance); error metrics invert
    assert retention("accuracy", 0.09, 0.1, chance=0.1) is None
    assert retention("accuracy", 0.9, 0.95, chance=0.1) == pytest.approx(0.9 / 0.95)
    assert retention("mae", 0.2, 0.1) == pytest.approx(0.5)
    assert retention("accuracy", float("nan"), 0.9) is None


def test_chance_is_the_best_constant_predictor_on_real_labels():
    _, y = load_digits(return_X_y=True)
    y = torch.as_tensor(y[:200])
    task = Task("multiclass", 10)
    majority = float(torch.bincount(y).max()) / len(y)
    assert task.chance("accuracy", y) == pytest.approx(majority)
    assert task.chance("accuracy") == pytest.approx(0.1)
    # the wake-word trial: "always keyword" scores F1 0.667 at accuracy 0.5
    keyword = torch.tensor([1, 0] * 50)
    assert Task("binary", 1).chance("f1", keyword) == pytest.approx(2 / 3, abs=1e-4)
    assert Task("binary", 2).chance("auc", keyword) == pytest.approx(0.5)
    assert Task("regression", 1).chance("ccc", torch.randn(20, 1)) == pytest.approx(0.0)


@pytest.mark.parametrize("kind,outputs", [("binary", 1), ("multilabel", 3), ("multiclass", 3)])
def test_label_smoothing_changes_the_hard_loss(kind, outputs):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(16, outputs, generator=gen) * 3
    targets = torch.randint(0, 2, (16, outputs), generator=gen) if kind == "multilabel" else \
        torch.randint(0, 2 if kind == "binary" else outputs, (16,), generator=gen)
    plain = Task(kind, outputs).hard_loss(logits, targets)
    smooth = Task(kind, outputs).with_label_smoothing(0.2).hard_loss(logits, targets)
    assert not torch.isclose(plain, smooth)
    if kind != "multiclass":  # sigmoid tasks: the target becomes y(1-s) + s/2 (timm's BinaryCrossEntropy)
        t = targets.float().reshape(logits.shape) * 0.8 + 0.1
        assert smooth == pytest.approx(float(torch.nn.functional.binary_cross_entropy_with_logits(logits, t)))
