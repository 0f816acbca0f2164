"""Decoupled Knowledge Distillation (multiclass only)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from compress.core.errors import KdtoolError
from compress.distill.losses.base import LOSSES, KDLoss, flatten_classes


def _kl_rows(log_t: Tensor, log_s: Tensor) -> Tensor:
    """Σ_c p_t (log p_t − log p_s) averaged over rows, from log-probabilities."""
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True)


@LOSSES.register("dkd")
class DecoupledKD(KDLoss):
    """Decoupled KD: target-class KD (TCKD) and non-target-class KD (NCKD) weighted separately.

    Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022.

        p = softmax(z / T);  b = [p_y, 1 − p_y]  (binary target / rest);  p̂ = softmax over classes ≠ y
        TCKD = KL(b_t ‖ b_s),  NCKD = KL(p̂_t ‖ p̂_s)
        loss = T² · (alpha · TCKD + beta · NCKD)      (means over the batch)

    `alpha`/`beta` are the paper's (defaults 1 and 8, its CIFAR-100 setting). Needs the targets
    y, and at least 3 classes: on binary outputs the non-target part is empty and DKD reduces to
    plain KD, so it is refused there. Computed in log-space in fp32.

    Args:
        alpha: weight of TCKD.
        beta: weight of NCKD.
    """

    applies_to = "logits"

    def __init__(self, alpha: float = 1.0, beta: float = 8.0) -> None:
        super().__init__()
        self.alpha = float(alpha)
        self.beta = float(beta)

    def check_task(self, task: Any) -> None:
        """DKD is defined for multiclass outputs with at least 3 classes only."""
        if task.kind != "multiclass" or task.num_outputs < 3:
            raise KdtoolError(f"KD loss 'dkd' is undefined for a {task.kind} task with "
                              f"{task.num_outputs} output(s)",
                              "DKD needs multiclass outputs with >= 3 classes; use kl or bce_kd")

    def forward(self, student: Tensor, teacher: Tensor, *, temperature: float = 1.0,
                targets: Tensor | None = None) -> Tensor:
        s, t = flatten_classes(student, teacher, "dkd")
        n, c = s.shape
        if c < 3:
            raise KdtoolError(f"dkd: outputs have {c} logit(s)",
                              "DKD needs multiclass outputs with >= 3 classes")
        if targets is None:
            raise KdtoolError("dkd: no targets given",
                              "DKD splits the target class from the rest: pass targets")
        y = targets.reshape(-1).long()
        is_target = F.one_hot(y, c).bool()  # (N, C)
        log_s = F.log_softmax(s / temperature, dim=-1)
        log_t = F.log_softmax(t / temperature, dim=-1)

        def binary(log_p: Tensor) -> Tensor:  # (N, 2): log [p_y, 1 − p_y]
            rest = log_p.masked_fill(is_target, float("-inf")).logsumexp(-1)
            return torch.stack([log_p[is_target], rest], dim=-1)

        tckd = _kl_rows(binary(log_t), binary(log_s))
        # Non-target logits only: (N, C-1); the softmax over them is p̂.
        s_rest = s[~is_target].reshape(n, c - 1) / temperature
        t_rest = t[~is_target].reshape(n, c - 1) / temperature
        nckd = _kl_rows(F.log_softmax(t_rest, -1), F.log_softmax(s_rest, -1))
        return (self.alpha * tckd + self.beta * nckd) * temperature**2
