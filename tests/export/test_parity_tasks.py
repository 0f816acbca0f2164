"""Task-aware parity: four broken artifacts that the max-abs + agreement rule used to pass.

Reference models are scikit-learn fits on the digits data turned into `nn.Linear` layers; each
"artifact" is the reference with one realistic fault (shifted logits, constant output, swapped
classes), judged at int8, the loosest tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LinearRegression, LogisticRegression
from torch import nn

from compress.core.tasks import Task
from export.verify import check_parity


@pytest.fixture(scope="module")
def digits_xy() -> tuple[torch.Tensor, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return torch.tensor(x[:400] / 16.0, dtype=torch.float32), y[:400]


def _linear(weight: np.ndarray, bias: np.ndarray) -> nn.Module:
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        layer.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    return layer.eval()


def _artifact(model: nn.Module, fault):
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return fault(model(torch.from_numpy(x))).numpy()
    return run


def _check(model, fault, x, targets, task):
    return check_parity(_artifact(model, fault), model, x[:2], "int8", inputs=x, task=task, targets=targets)


def test_multilabel_logits_shifted_by_a_quarter_scale_fail(digits_xy):
    x, y = digits_xy
    labels = np.eye(10, dtype=int)[y]  # ten "is digit d" labels: positives are rare, as in tagging tasks
    fits = [LogisticRegression(max_iter=500).fit(x.numpy(), labels[:, i]) for i in range(labels.shape[1])]
    model = _linear(np.concatenate([f.coef_ for f in fits]), np.concatenate([f.intercept_ for f in fits]))
    scale = float(model(x).abs().max())
    p = _check(model, lambda out: out - 0.249 * scale, x, torch.as_tensor(labels), Task("multilabel", 10))
    assert p.status == "failed" and "positives" in p.failed and "metric" in p.failed
    assert "max_abs" not in p.failed and p.agreement >= 0.90  # both old criteria were met
    assert check_parity(_artifact(model, lambda out: out), model, x[:2], "int8", inputs=x,
                        task=Task("multilabel", 10), targets=torch.as_tensor(labels)).status == "passed"


def test_regression_artifact_returning_a_constant_fails(digits_xy):
    x, y = digits_xy
    target = 5.0 + y / 9.0  # e.g. a rating in [5, 6]: large mean, small spread
    fit = LinearRegression().fit(x.numpy(), target)
    model = _linear(fit.coef_[None], np.array([fit.intercept_]))
    mean = float(model(x).mean())
    p = _check(model, lambda out: torch.full_like(out, mean), x, torch.as_tensor(target, dtype=torch.float32)[:, None],
               Task("regression", 1))
    assert p.status == "failed" and {"agreement", "metric"} <= set(p.failed)
    assert p.agreement < 0.5 and p.metric_delta < -0.5  # CCC fell to 0


def test_one_logit_binary_shifted_until_f1_halves_fails(digits_xy):
    x, y = digits_xy
    target = (y == 3).astype(int)  # a rare positive class: a shift flips the few positives, not the negatives
    fit = LogisticRegression(max_iter=500).fit(x.numpy(), target)
    model = _linear(fit.coef_, fit.intercept_)
    logits = model(x).detach()
    shift = float(logits[logits > 0].median())  # half the positive decisions flip
    assert shift < 0.25 * float(logits.abs().max())
    task = Task("binary", 1, metric="f1")
    p = _check(model, lambda out: out - shift, x, torch.as_tensor(target), task)
    f1 = task.metrics(logits, torch.as_tensor(target))["f1"]
    assert task.metrics(logits - shift, torch.as_tensor(target))["f1"] < 0.75 * f1
    assert p.status == "failed" and "positives" in p.failed and "metric" in p.failed
    assert p.agreement >= 0.90  # overall decisions still agree: the old rule passed it


def test_hundred_classes_with_two_rare_classes_swapped_fails(digits_xy):
    x, _ = digits_xy
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(100, 64, generator=gen) * 0.3
    counts = torch.bincount((x @ weight.T).argmax(-1), minlength=100)
    a = int(torch.where((counts >= 8) & (counts <= 20))[0][0])  # a rarely picked class
    b = int(torch.where(counts == 0)[0][0])  # a never picked class becomes a's near twin: they split a's samples
    mine = x[(x @ weight.T).argmax(-1) == a]
    k = int(mine.var(0).argmax())  # along the pixel that varies most among a's samples
    weight[b], bias = weight[a].clone(), np.zeros(100)
    weight[b, k] += 0.05
    bias[b] = -0.05 * (float(mine[:, k].mean()) + 1e-3)
    model = _linear(weight.numpy(), bias)
    picks = model(x).argmax(-1)
    counts = torch.bincount(picks, minlength=100)
    assert counts[a] + counts[b] < 0.1 * len(x) and min(counts[a], counts[b]) >= 3

    def swap(out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[:, [a, b]] = out[:, [b, a]]
        return out

    p = _check(model, swap, x, picks, Task("multiclass", 100))
    assert p.status == "failed" and p.failed == ["class_agreement"]
    assert p.agreement >= 0.90 and p.max_rel <= 0.25  # both old criteria were met


def test_metric_criterion_is_one_sided_a_qat_artifact_may_score_higher(digits_xy):
    # the ExecuTorch int8 artifact of a QAT model is compared with its PT2E reference (it matches it)
    # and, for the metric, with the fp32 student it started from, which QAT trained further
    x, y = digits_xy
    target = (y >= 5).astype(int)
    good = LogisticRegression(max_iter=500).fit(x.numpy(), target)
    weak = LogisticRegression(max_iter=500).fit(x.numpy()[:, :8], target)  # sees only the top pixel rows
    qat, student = _linear(good.coef_, good.intercept_), _linear(np.pad(weak.coef_, ((0, 0), (0, 56))), weak.intercept_)
    task = Task("binary", 1, metric="accuracy")
    better = check_parity(_artifact(qat, lambda o: o), qat, x[:2], "int8", inputs=x, task=task,
                          targets=torch.as_tensor(target), student=student, student_decisions=False)
    assert better.status == "passed" and better.metric_delta > 0.1
    worse = check_parity(_artifact(student, lambda o: o), student, x[:2], "int8", inputs=x, task=task,
                         targets=torch.as_tensor(target), student=qat, student_decisions=False)
    assert worse.status == "failed" and worse.failed == ["metric"] and worse.metric_delta < -0.1
