"""Response KD: losses on the models' final outputs (softmax KL, sigmoid KD, output regression)."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from compress.core.errors import KdtoolError
from compress.distill.losses.base import LOSSES, KDLoss, flatten_classes


@LOSSES.register("kl")
class KLDivergenceKD(KDLoss):
    """Hinton KD: KL between temperature-softened softmaxes, scaled by T².

    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.

        loss = T² · (1/N) Σₙ Σ_c p_t(c) · (log p_t(c) − log p_s(c)),   p = softmax(z / T)

    Classes are the last dimension; (N, L, C) outputs average over the N·L rows. The T² factor
    keeps the soft gradients' size independent of T. Log-probabilities are computed in fp32 and
    the teacher's are passed as log-targets, so extreme logits stay finite.
    """

    applies_to = "logits"

    def check_task(self, task: Any) -> None:
        """Softmax KD is constant 0 on one logit and undefined on regression outputs."""
        if task.kind == "regression" or task.num_outputs < 2:
            raise KdtoolError(f"KD loss 'kl' is undefined for a {task.kind} task with "
                              f"{task.num_outputs} output(s)",
                              "use soft_loss: bce_kd (one logit / multilabel) or mse (regression)")

    def forward(self, student: Tensor, teacher: Tensor, *, temperature: float = 1.0,
                targets: Tensor | None = None) -> Tensor:
        s, t = flatten_classes(student, teacher, "kl")
        log_s = F.log_softmax(s / temperature, dim=-1)  # (N, C)
        log_t = F.log_softmax(t / temperature, dim=-1)
        return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * temperature**2


@LOSSES.register("bce_kd")
class SigmoidKD(KDLoss):
    """Sigmoid KD for one-logit binary and multilabel outputs: Bernoulli KL per output, scaled by T².

    The sigmoid counterpart of Hinton KD (as used for multilabel distillation, e.g. Liu et al.,
    "Multi-Label Image Classification via Knowledge Distillation from Weakly-Supervised
    Detection", 2018):

        q = σ(t/T), p = σ(s/T)
        loss = T² · mean[ BCE(p, q) − H(q) ] = T² · mean[ q·(log q − log p) + (1−q)·(log(1−q) − log(1−p)) ]

    Subtracting the teacher entropy H(q) (which has no gradient w.r.t. the student) makes the
    loss exactly 0 when student == teacher. log σ is computed with `logsigmoid` in fp32, so
    extreme logits stay finite. Mean over all N·C outputs, like the hard BCE loss.
    """

    applies_to = "logits"

    def forward(self, student: Tensor, teacher: Tensor, *, temperature: float = 1.0,
                targets: Tensor | None = None) -> Tensor:
        s, t = flatten_classes(student, teacher, "bce_kd")
        s, t = s / temperature, t / temperature
        q = t.sigmoid()
        kl = q * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - q) * (F.logsigmoid(-t) - F.logsigmoid(-s))
        return kl.mean() * temperature**2


@LOSSES.register("mse")
class OutputMSE(KDLoss):
    """Mean squared error between student and teacher outputs (regression KD); T is not used.

        loss = mean[(s − t)²]
    """

    applies_to = "outputs"

    def forward(self, student: Tensor, teacher: Tensor, *, temperature: float = 1.0,
                targets: Tensor | None = None) -> Tensor:
        s, t = flatten_classes(student, teacher, "mse")
        return F.mse_loss(s, t)


@LOSSES.register("l1")
class OutputL1(KDLoss):
    """Mean absolute error between student and teacher outputs (regression KD); T is not used.

        loss = mean|s − t|
    """

    applies_to = "outputs"

    def forward(self, student: Tensor, teacher: Tensor, *, temperature: float = 1.0,
                targets: Tensor | None = None) -> Tensor:
        s, t = flatten_classes(student, teacher, "l1")
        return F.l1_loss(s, t)
