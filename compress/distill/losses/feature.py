"""Feature KD: losses on captured intermediate layers (hints and attention maps)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from compress.core.errors import KdtoolError
from compress.distill.losses.base import LOSSES, KDLoss


@LOSSES.register("fitnet")
class FitNetHint(KDLoss):
    """FitNets hint loss: MSE between the (adapter-mapped) student feature and the teacher feature.

    Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015.

        loss = mean[(r(f_s) − f_t)²]

    r is the regressor (adapter) the objective builds from a shape probe (1x1 conv + resize for
    (N, C, H, W), linear for tokens); it is trained with the student and dropped at export.
    """

    needs_adapter = True

    def forward(self, student: Tensor, teacher: Tensor, *, temperature: float = 1.0,
                targets: Tensor | None = None) -> Tensor:
        if student.shape != teacher.shape:
            raise KdtoolError(f"fitnet: student feature {tuple(student.shape)} and teacher feature "
                              f"{tuple(teacher.shape)} differ",
                              "give the term a student_layer/teacher_layer pair so an adapter is built")
        return F.mse_loss(student.float(), teacher.float())


def attention_map(feature: Tensor, p: float, size: tuple[int, ...] | None = None) -> Tensor:
    """Spatial attention of a feature: mean over channels of |f|^p, resized, flattened, L2-normalized.

    Args:
        feature: (N, C, H, W) maps, or (N, L, D) tokens (the map is over the L tokens).
        p: the exponent (2 in the paper).
        size: (H, W) or (L,) to interpolate the map to before normalizing; None keeps it.

    Returns:
        (N, H·W) or (N, L) unit-norm attention vectors, fp32.
    """
    f = feature.float().abs().pow(p)
    if f.dim() == 4:
        a = f.mean(1, keepdim=True)  # (N, 1, H, W)
        mode = "bilinear"
    elif f.dim() == 3:
        a = f.mean(2).unsqueeze(1)  # (N, 1, L)
        mode = "linear"
    else:
        raise KdtoolError(f"attention: feature of shape {tuple(feature.shape)} has no spatial or token axis",
                          "use a layer giving (N, C, H, W) or (N, L, D) outputs")
    if size is not None and tuple(a.shape[2:]) != tuple(size):
        a = F.interpolate(a, size=size, mode=mode, align_corners=False)
    return F.normalize(a.flatten(1), dim=1)


@LOSSES.register("attention")
class AttentionTransfer(KDLoss):
    """Attention transfer: match normalized spatial attention maps (sum over channels of |f|^p).

    Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017 (their code's form).

        a(f) = vec(mean_c |f_c|^p) / ‖vec(mean_c |f_c|^p)‖₂
        loss = mean[(a(f_s) − a(f_t))²]

    Channels may differ (no adapter needed). A student map of another spatial size (or token
    count) is bilinearly (linearly) interpolated to the teacher's before normalizing. Works on
    (N, C, H, W) maps and (N, L, D) tokens; both sides must be the same kind.

    Args:
        p: exponent of |f| (2 in the paper).
    """

    def __init__(self, p: float = 2.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, student: Tensor, teacher: Tensor, *, temperature: float = 1.0,
                targets: Tensor | None = None) -> Tensor:
        if student.dim() != teacher.dim() or student.shape[0] != teacher.shape[0]:
            raise KdtoolError(f"attention: student feature {tuple(student.shape)} and teacher feature "
                              f"{tuple(teacher.shape)} are not both (N, C, H, W) or both (N, L, D)",
                              "pick layers of the same kind")
        size = tuple(teacher.shape[2:]) if teacher.dim() == 4 else (teacher.shape[1],)
        return (attention_map(student, self.p, size) - attention_map(teacher, self.p)).pow(2).mean()
