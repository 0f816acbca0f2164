"""Task kinds: the hard loss, the response-KD loss that fits the outputs, and the metrics.

| kind       | outputs            | targets          | hard loss         | default KD | metrics                  |
|------------|--------------------|------------------|-------------------|------------|--------------------------|
| binary     | (N, 1) or (N, 2)   | (N,) in {0, 1}   | BCE / CE          | bce_kd/kl  | auc (primary), acc, f1   |
| multiclass | (N, C)             | (N,) long        | CE                | kl         | accuracy (primary), f1   |
| multilabel | (N, C)             | (N, C) in {0, 1} | BCE               | bce_kd     | f1 (primary), auc        |
| regression | (N, K)             | (N, K) float     | MSE               | mse        | ccc (primary), mae       |

An undefined metric (AUC with one class in the labels, CCC of two constant series) is `None` with a
reason from `Task.score`, never NaN. CCC is Lin's (1989) concordance correlation coefficient with
population (1/N) moments, as AVEC and the affect-computing challenges define it.

Retention (`retention`) depends on the metric's kind: bounded higher-is-better metrics (auc,
accuracy, f1) and signed ones (ccc) are `value / teacher`, computed only when the teacher scores
above chance (a constant predictor: AUC 0.5, accuracy 1/C, CCC 0); error metrics (mae) are
`teacher / value`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import torch
import torch.nn.functional as F

from compress.core.errors import KdtoolError

LOWER_IS_BETTER = {"mae", "mse", "loss"}
TEXTBOOK_CHANCE = {"auc": 0.5, "ccc": 0.0}
"""Chance level of metrics whose constant-predictor score does not depend on the data."""
INT8_MIN_AGREEMENT = 0.90
"""Decision agreement (`Task.agreement`) an int8 model keeps with its fp32 self: export parity's int8
bound, and the accuracy-aware floor's second condition (a floor met on the metric alone let through
int8 models that then failed parity: MobileNetV3-Large, retention 0.99 at agreement 0.875)."""
SCALE_FLOOR = 1e-6
SPREAD_FLOOR = 1e-3
"""The regression spread is at least this fraction of the output scale."""


class TaskSpec(Protocol):
    """The fields `Task.from_config` reads: the recipe's `task` section (`recipes.schema.TaskConfig`)."""

    @property
    def kind(self) -> str: ...
    @property
    def num_classes(self) -> int: ...
    @property
    def labels(self) -> Sequence[str] | None: ...
    @property
    def outputs(self) -> Sequence[str] | None: ...
    @property
    def metric(self) -> str | None: ...


@dataclass(frozen=True)
class Task:
    """What the model predicts; built from the recipe's `task` section by `Task.from_config`."""

    kind: str
    num_outputs: int
    labels: tuple[str, ...] | None = None
    outputs: tuple[str, ...] | None = None
    metric: str | None = None
    label_smoothing: float = 0.0

    @classmethod
    def from_config(cls, cfg: TaskSpec) -> Task:
        """The task a recipe's `task` section describes."""
        return cls(cfg.kind, cfg.num_classes, tuple(cfg.labels) if cfg.labels else None,
                   tuple(cfg.outputs) if cfg.outputs else None, cfg.metric)

    def with_label_smoothing(self, smoothing: float) -> Task:
        """This task with `smoothing` applied to its hard-label loss (`train.label_smoothing`)."""
        return replace(self, label_smoothing=float(smoothing))

    @property
    def primary_metric(self) -> str:
        """The metric that picks the best checkpoint and defines retention."""
        return self.metric or {"binary": "auc", "multiclass": "accuracy", "multilabel": "f1",
                               "regression": "ccc"}[self.kind]

    @property
    def default_soft_loss(self) -> str:
        """Response-KD loss fitting the outputs: softmax KL, sigmoid BCE-KD, or output MSE."""
        if self.kind == "multiclass" or (self.kind == "binary" and self.num_outputs == 2):
            return "kl"
        return "mse" if self.kind == "regression" else "bce_kd"

    def hard_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Loss against the ground truth, computed in fp32.

        With `label_smoothing` s, softmax tasks use cross-entropy's smoothing (Szegedy et al. 2016);
        sigmoid tasks train each output towards `y·(1 − s) + s/2` (timm's `BinaryCrossEntropy`).
        """
        outputs = outputs.float()
        s = self.label_smoothing
        if self.kind == "multiclass" or (self.kind == "binary" and self.num_outputs == 2):
            return F.cross_entropy(outputs, targets.long(), label_smoothing=s)
        if self.kind == "binary":
            soft = targets.float().reshape(-1) * (1 - s) + s / 2
            return F.binary_cross_entropy_with_logits(outputs.reshape(-1), soft)
        if self.kind == "multilabel":
            return F.binary_cross_entropy_with_logits(outputs, targets.float() * (1 - s) + s / 2)
        return F.mse_loss(outputs, targets.float().reshape(outputs.shape))

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        """Probabilities (classification) or values (regression) from raw outputs."""
        outputs = outputs.float()
        if self.kind == "binary":
            return torch.sigmoid(outputs.reshape(-1)) if self.num_outputs == 1 else outputs.softmax(-1)[:, 1]
        if self.kind == "multiclass":
            return outputs.softmax(-1)
        if self.kind == "multilabel":
            return torch.sigmoid(outputs)
        return outputs

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        """Hard decisions (class ids / 0-1 flags) or values, for agreement between two models."""
        s = self.scores(outputs)
        if self.kind == "multiclass":
            return s.argmax(-1)
        if self.kind in ("binary", "multilabel"):
            return (s >= 0.5).long()
        return s

    def metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float | None]:
        """All metrics of this task kind (torchmetrics), as plain floats; None where undefined."""
        return self.score(outputs, targets)[0]

    def score(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[dict[str, float | None], dict[str, str]]:
        """Metrics and, per metric that is undefined or partial, the reason (never NaN).

        Returns:
            `{metric: value or None}` and `{metric: reason}` for each None value or partial average.
        """
        # torchmetrics is imported here, not at the top: importing it takes ~3 s (it loads torchvision,
        # transformers and scipy.signal), which every `kdtool` process would pay before its first line.
        from torchmetrics.functional.classification import (
            binary_accuracy,
            binary_auroc,
            binary_f1_score,
            multiclass_accuracy,
            multiclass_f1_score,
            multilabel_f1_score,
        )

        s = self.scores(outputs)
        notes: dict[str, str] = {}
        if self.kind == "binary":
            t = targets.long().reshape(-1)
            out = {"accuracy": binary_accuracy(s, t), "f1": binary_f1_score(s, t)}
            out["auc"] = binary_auroc(s, t) if t.min() != t.max() else None
            if out["auc"] is None:
                notes["auc"] = f"undefined: every validation label is {int(t[0])}"
        elif self.kind == "multiclass":
            t = targets.long()
            out = {"accuracy": multiclass_accuracy(s, t, self.num_outputs, average="micro"),
                   "f1": multiclass_f1_score(s, t, self.num_outputs, average="macro")}
        elif self.kind == "multilabel":
            t = targets.long()
            out = {"f1": multilabel_f1_score(s, t, self.num_outputs, average="macro"),
                   "auc": _multilabel_auc(s, t, notes)}
        else:
            out = self._regression_metrics(s, targets, notes)
        return {k: None if v is None else float(v) for k, v in out.items()}, notes

    def _regression_metrics(self, s: torch.Tensor, targets: torch.Tensor, notes: dict[str, str]) -> dict:
        from torchmetrics.functional.regression import mean_absolute_error  # lazily: see `score`

        t = targets.float().reshape(s.shape)
        names = self.outputs or tuple(f"y{i}" for i in range(s.shape[1]))
        ccc = [lin_ccc(s[:, i], t[:, i]) for i in range(s.shape[1])]
        out: dict[str, torch.Tensor | float | None] = {}
        defined = [c for c in ccc if c is not None]
        out["ccc"] = sum(defined) / len(defined) if defined else None
        out["mae"] = mean_absolute_error(s, t)
        if not defined:
            notes["ccc"] = "undefined: predictions and targets are both constant"
        elif len(defined) < len(ccc):
            notes["ccc"] = f"mean over {len(defined)} of {len(ccc)} outputs (the others are constant on both sides)"
        for i, name in enumerate(names):
            out[f"ccc_{name}"] = ccc[i]
            if ccc[i] is None:
                notes[f"ccc_{name}"] = "undefined: predictions and targets are both constant"
            out[f"mae_{name}"] = mean_absolute_error(s[:, i], t[:, i])
        return out

    def chance(self, metric: str, targets: torch.Tensor | None = None) -> float | None:
        """The best score of a constant predictor: what "above chance" means for this metric.

        With `targets`, every constant output (each class; all-0 and all-1 for sigmoid tasks; the
        target mean for regression) is scored and the best kept (e.g. accuracy of always predicting
        the majority class, F1 of "always positive"); without, the textbook value (AUC 0.5,
        accuracy 1/C, CCC 0) or None where it depends on the data (F1). Error metrics: None.
        """
        if lower_is_better(metric):
            return None
        if targets is None or len(targets) == 0:
            classes = 2 if self.kind == "binary" else self.num_outputs
            return {"auc": 0.5, "accuracy": 1.0 / max(classes, 1)}.get(metric, 0.0 if metric.startswith("ccc")
                                                                        else None)
        values = [m.get(metric) for m in (self.metrics(o, targets) for o in self._constant_outputs(targets))]
        values = [v for v in values if v is not None]
        return max(values) if values else None

    def _constant_outputs(self, targets: torch.Tensor) -> list[torch.Tensor]:
        """Raw outputs of every constant predictor worth trying on `targets`."""
        n = len(targets)
        if self.kind == "regression":
            t = targets.float().reshape(n, -1)
            return [t.mean(0, keepdim=True).expand(n, -1).clone()]
        if self.kind == "multiclass" or (self.kind == "binary" and self.num_outputs == 2):
            eye = torch.eye(self.num_outputs) * 10.0
            return [eye[c].expand(n, -1).clone() for c in range(self.num_outputs)]
        width = self.num_outputs if self.kind == "multilabel" else 1
        return [torch.full((n, width), v) for v in (-10.0, 10.0)]

    def agreement(self, outputs: torch.Tensor, reference: torch.Tensor, scale: float | None = None) -> float:
        """Fraction of equal decisions (`predictions`) with a reference model; regression 1 - MAE / spread.

        The spread is the std of the reference outputs, floored at `SPREAD_FLOOR` x `scale` (default
        max |reference|) so that a near-constant reference does not turn kernel-order noise into
        disagreement; a constant model scores about 0 however close it is to the mean. Export parity
        and the accuracy-aware INT8 floor both judge with this (`INT8_MIN_AGREEMENT`).
        """
        if self.kind == "regression":
            ref = reference.float()
            if scale is None:
                scale = float(ref.abs().max()) if ref.numel() else 0.0
            std = float(ref.std(unbiased=False)) if ref.numel() > 1 else 0.0
            spread = max(std, SPREAD_FLOOR * scale, SCALE_FLOOR)
            return float(1.0 - ((outputs.float() - ref).abs().mean() / spread).clamp(max=1.0))
        return float((self.predictions(outputs) == self.predictions(reference)).float().mean())

    def check_targets(self, targets: torch.Tensor, where: str) -> None:
        """Reject NaN or out-of-range labels with a message naming where they came from."""
        t = targets.float()
        if not torch.isfinite(t).all():
            raise KdtoolError(f"{where}: labels contain NaN or Inf", "clean the labels")
        if self.kind in ("binary", "multilabel") and ((t != 0) & (t != 1)).any():
            raise KdtoolError(f"{where}: {self.kind} labels must be 0 or 1, found {t[(t != 0) & (t != 1)][0].item()}",
                              "binarise the labels")
        if self.kind == "multiclass" and (t.min() < 0 or t.max() >= self.num_outputs or (t != t.round()).any()):
            bad = t[(t < 0) | (t >= self.num_outputs) | (t != t.round())][0].item()
            raise KdtoolError(f"{where}: class label {bad:g} outside 0..{self.num_outputs - 1}",
                              "set task.num_classes to the number of classes")


def as_task(task: Task | str | None, model: torch.nn.Module, example: torch.Tensor | None) -> Task:
    """`task` as a `Task`: a kind's width is the model's output width on `example` (default multiclass).

    Raises:
        KdtoolError: a task kind without an example to size it.
    """
    if isinstance(task, Task):
        return task
    if example is None:
        raise KdtoolError("the task's output width is unknown without data",
                          "pass task=Task(kind, num_outputs) or a loader")
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(example)
    model.train(was_training)
    out = out[0] if isinstance(out, tuple | list) else out
    return Task(task or "multiclass", int(out.shape[-1]) if out.dim() > 1 else 1)


def lower_is_better(metric: str) -> bool:
    """Error metrics (MAE, per-output `mae_*`, MSE, loss): smaller is better."""
    return metric in LOWER_IS_BETTER or metric.startswith("mae")


def retention(metric: str, value: float | None, reference: float | None,
              chance: float | None = None) -> float | None:
    """Fraction of the reference's metric kept, or None (see `retention_with_reason`)."""
    return retention_with_reason(metric, value, reference, chance)[0]


def retention_with_reason(metric: str, value: float | None, reference: float | None,
                          chance: float | None = None) -> tuple[float | None, str | None]:
    """Fraction of the reference's metric kept, or None with the reason.

    - error metrics (MAE, ...): `reference / value` (needs value > 0);
    - higher-is-better metrics, bounded (AUC, accuracy, F1) or signed (CCC): `value / reference`,
      only when the reference scores above `chance` (a constant predictor's score; 0 for signed
      metrics when not given). Against a reference at or below chance the ratio says nothing.

    Returns:
        `(retention, None)` or `(None, reason)`.
    """
    if value is None or reference is None or not math.isfinite(value) or not math.isfinite(reference):
        return None, f"{metric} not measured for {'this model' if value is None else 'the reference'}"
    if lower_is_better(metric):
        return (reference / value, None) if value > 0 else (None, f"{metric} is 0: the ratio is undefined")
    if chance is None:
        chance = TEXTBOOK_CHANCE.get(metric.split("_")[0])
    if chance is not None and reference <= chance:
        return None, (f"reference {metric} {reference:.4g} is at or below chance ({chance:.4g}): "
                      "retention is meaningless")
    if reference <= 0:
        return None, f"reference {metric} {reference:.4g} is not positive"
    return value / reference, None


def lin_ccc(x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Lin's concordance correlation coefficient with population moments (Lin 1989; AVEC).

    `ccc = 2·cov(x, y) / (var(x) + var(y) + (mean(x) − mean(y))²)`, with 1/N (population)
    variances and covariance. A constant prediction against varying targets scores 0; None only
    when both series are constant (and equal), where the ratio is 0/0.
    """
    x, y = x.double().reshape(-1), y.double().reshape(-1)
    if x.numel() == 0:
        return None
    mx, my = x.mean(), y.mean()
    cov = ((x - mx) * (y - my)).mean()
    denom = x.var(unbiased=False) + y.var(unbiased=False) + (mx - my) ** 2
    if float(denom) <= 1e-24:
        return None
    return float(2 * cov / denom)


def _multilabel_auc(s: torch.Tensor, t: torch.Tensor, notes: dict[str, str]) -> float | None:
    """Macro AUC over the labels where it is defined (both classes present); the note says how many."""
    from torchmetrics.functional.classification import multilabel_auroc  # lazily: see `Task.score`

    defined = [i for i in range(t.shape[1]) if t[:, i].min() != t[:, i].max()]
    if not defined:
        notes["auc"] = "undefined: every label has a single class in the validation labels"
        return None
    per_label = multilabel_auroc(s[:, defined], t[:, defined], len(defined), average=None).reshape(-1)
    if len(defined) < t.shape[1]:
        notes["auc"] = (f"macro over the {len(defined)} of {t.shape[1]} labels where AUC is defined "
                        "(the others have one class in the validation labels)")
    return float(per_label.mean())
