"""Task kinds: the hard loss, the response-KD loss that fits the outputs, and the metrics.

| kind       | outputs            | targets          | hard loss         | default KD | metrics                  |
|------------|--------------------|------------------|-------------------|------------|--------------------------|
| binary     | (N, 1) or (N, 2)   | (N,) in {0, 1}   | BCE / CE          | bce_kd/kl  | auc (primary), acc, f1   |
| multiclass | (N, C)             | (N,) long        | CE                | kl         | accuracy (primary), f1   |
| multilabel | (N, C)             | (N, C) in {0, 1} | BCE               | bce_kd     | f1 (primary), auc        |
| regression | (N, K)             | (N, K) float     | MSE               | mse        | ccc (primary), mae       |
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_f1_score,
    multiclass_accuracy,
    multiclass_f1_score,
    multilabel_auroc,
    multilabel_f1_score,
)
from torchmetrics.functional.regression import concordance_corrcoef, mean_absolute_error

from compress.core.errors import KdtoolError
from recipes.schema import TaskConfig

LOWER_IS_BETTER = {"mae", "mse", "loss"}


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
    def from_config(cls, cfg: TaskConfig) -> Task:
        return cls(cfg.kind, cfg.num_classes, tuple(cfg.labels) if cfg.labels else None,
                   tuple(cfg.outputs) if cfg.outputs else None, cfg.metric)

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
        """Loss against the ground truth, computed in fp32."""
        outputs = outputs.float()
        if self.kind == "multiclass" or (self.kind == "binary" and self.num_outputs == 2):
            return F.cross_entropy(outputs, targets.long(), label_smoothing=self.label_smoothing)
        if self.kind == "binary":
            return F.binary_cross_entropy_with_logits(outputs.reshape(-1), targets.float().reshape(-1))
        if self.kind == "multilabel":
            return F.binary_cross_entropy_with_logits(outputs, targets.float())
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

    def metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """All metrics of this task kind (torchmetrics), as plain floats."""
        s = self.scores(outputs)
        if self.kind == "binary":
            t = targets.long().reshape(-1)
            out = {"accuracy": binary_accuracy(s, t), "f1": binary_f1_score(s, t)}
            out["auc"] = binary_auroc(s, t) if t.min() != t.max() else torch.tensor(float("nan"))
        elif self.kind == "multiclass":
            t = targets.long()
            out = {"accuracy": multiclass_accuracy(s, t, self.num_outputs, average="micro"),
                   "f1": multiclass_f1_score(s, t, self.num_outputs, average="macro")}
        elif self.kind == "multilabel":
            t = targets.long()
            out = {"f1": multilabel_f1_score(s, t, self.num_outputs, average="macro"),
                   "auc": multilabel_auroc(s, t, self.num_outputs, average="macro")}
        else:
            t = targets.float().reshape(s.shape)
            names = self.outputs or tuple(f"y{i}" for i in range(s.shape[1]))
            ccc = concordance_corrcoef(s, t).reshape(-1) if len(s) > 1 else torch.full((s.shape[1],), float("nan"))
            out = {"ccc": ccc.mean(), "mae": mean_absolute_error(s, t)}
            for i, name in enumerate(names):
                out[f"ccc_{name}"] = ccc[i]
                out[f"mae_{name}"] = mean_absolute_error(s[:, i], t[:, i])
        return {k: float(v) for k, v in out.items()}

    def agreement(self, outputs: torch.Tensor, reference: torch.Tensor) -> float:
        """Top-1 agreement with a reference model (classification), or 1 - normalised MAE (regression)."""
        a, b = self.predictions(outputs), self.predictions(reference)
        if self.kind == "regression":
            scale = b.abs().mean().clamp_min(1e-8)
            return float(1.0 - ((a - b).abs().mean() / scale).clamp(max=1.0))
        return float((a == b).float().mean())

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


def lower_is_better(metric: str) -> bool:
    """Error metrics (MAE, per-output `mae_*`, MSE, loss): smaller is better."""
    return metric in LOWER_IS_BETTER or metric.startswith("mae")


def retention(metric: str, value: float, reference: float) -> float | None:
    """Fraction of the reference's metric kept (reference / value for error metrics such as MAE)."""
    if value is None or reference is None or reference != reference or value != value:
        return None
    if lower_is_better(metric):
        return reference / value if value > 0 else None
    return value / reference if reference != 0 else None
