"""Relation KD: match how samples of a batch relate to each other (distances, angles, similarities)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from compress.core.errors import KdtoolError
from compress.distill.losses.base import LOSSES, KDLoss


def _rows(student: Tensor, teacher: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """Flatten each sample to one fp32 vector: (N, ...) → (N, D); batch sizes must agree."""
    if student.shape[0] != teacher.shape[0]:
        raise KdtoolError(f"{name}: student batch {student.shape[0]} and teacher batch "
                          f"{teacher.shape[0]} differ",
                          "feed student and teacher the same samples")
    return student.float().flatten(1), teacher.float().flatten(1)


def _pairwise_distance(e: Tensor, eps: float = 1e-12) -> Tensor:
    """(N, D) → (N, N) Euclidean distances with a zero diagonal (gradient-safe at 0)."""
    sq = e.pow(2).sum(1)
    d = (sq.unsqueeze(0) + sq.unsqueeze(1) - 2 * e @ e.t()).clamp(min=eps).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=d.dtype))


def _angles(e: Tensor) -> Tensor:
    """(N, D) → (N, N, N) cosines of the angle at j between samples i and k."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # (N, N, D): e_j - e_i
    return torch.bmm(diff, diff.transpose(1, 2))


@LOSSES.register("rkd")
class RelationalKD(KDLoss):
    """Relational KD: distance-wise and angle-wise relations of the batch, Huber-matched.

    Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019.

        ψ_D(i, j) = ‖e_i − e_j‖ / μ,   μ = mean of the batch's non-zero distances
        ψ_A(i, j, k) = ⟨(e_i − e_j)/‖e_i − e_j‖, (e_k − e_j)/‖e_k − e_j‖⟩
        loss = distance_weight · Huber(ψ_D^s, ψ_D^t) + angle_weight · Huber(ψ_A^s, ψ_A^t)

    e are flattened features or outputs; student and teacher widths may differ. Defaults 1 and 2
    are the authors' code's ratio (the paper's 25:50). The angle term costs O(N³·D) memory.

    Args:
        distance_weight: weight of the distance term.
        angle_weight: weight of the angle term.
    """

    def __init__(self, distance_weight: float = 1.0, angle_weight: float = 2.0) -> None:
        super().__init__()
        self.distance_weight = float(distance_weight)
        self.angle_weight = float(angle_weight)

    def forward(self, student: Tensor, teacher: Tensor, *, temperature: float = 1.0,
                targets: Tensor | None = None) -> Tensor:
        s, t = _rows(student, teacher, "rkd")
        loss = s.new_zeros(())
        if self.distance_weight:
            with torch.no_grad():
                d_t = _pairwise_distance(t)
                d_t = d_t / d_t[d_t > 0].mean().nan_to_num(1.0)
            d_s = _pairwise_distance(s)
            d_s = d_s / d_s[d_s > 0].mean().nan_to_num(1.0)
            loss = loss + self.distance_weight * F.smooth_l1_loss(d_s, d_t)
        if self.angle_weight:
            with torch.no_grad():
                a_t = _angles(t)
            loss = loss + self.angle_weight * F.smooth_l1_loss(_angles(s), a_t)
        return loss


@LOSSES.register("sp")
class SimilarityPreserving(KDLoss):
    """Similarity-preserving KD: match the batch's row-normalized Gram matrices.

    Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019.

        G = normalize_rows(Q Qᵀ),  Q = features flattened to (N, D)
        loss = ‖G_s − G_t‖²_F / N²

    Student and teacher widths may differ (G is N × N).
    """

    def forward(self, student: Tensor, teacher: Tensor, *, temperature: float = 1.0,
                targets: Tensor | None = None) -> Tensor:
        s, t = _rows(student, teacher, "sp")
        g_s = F.normalize(s @ s.t(), p=2, dim=1)  # (N, N)
        g_t = F.normalize(t @ t.t(), p=2, dim=1)
        return (g_s - g_t).pow(2).sum() / len(s) ** 2
