"""Adapters that map a student feature to its teacher feature's shape, built from a shape probe.

Before training, student and teacher run once on example inputs with hooks on the paired layers
(`probe`); `build_adapter` then picks the smallest map that makes the shapes equal:

| student → teacher                   | adapter                                             |
|-------------------------------------|-----------------------------------------------------|
| same shape                          | identity                                            |
| (N, Cs, Hs, Ws) → (N, Ct, Ht, Wt)   | 1x1 conv Cs→Ct (+ BatchNorm), bilinear resize to Ht×Wt |
| (N, Ls, Ds) → (N, Lt, Dt) tokens    | linear Ds→Dt, linear interpolation Ls→Lt            |
| (N, Ds) → (N, Dt)                   | linear Ds→Dt                                        |
| anything else (e.g. 4D vs 2D)       | KdtoolError naming both layers and shapes           |

Adapters live in the objective (trained with the student, saved in its checkpoints) and never
in the student, so export drops them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compress.core.errors import KdtoolError
from compress.distill.hooks import capture


class ConvAdapter(nn.Module):
    """(N, Cs, Hs, Ws) → (N, Ct, Ht, Wt): 1x1 conv (optional BatchNorm), then bilinear resize.

    Args:
        in_channels: student channels.
        out_channels: teacher channels.
        size: teacher (H, W).
        batchnorm: add a BatchNorm2d after the conv.
    """

    def __init__(self, in_channels: int, out_channels: int, size: tuple[int, int],
                 batchnorm: bool = False) -> None:
        super().__init__()
        self.size = tuple(size)
        self.proj: nn.Module = nn.Identity()
        if in_channels != out_channels:
            conv = nn.Conv2d(in_channels, out_channels, 1, bias=not batchnorm)
            self.proj = nn.Sequential(conv, nn.BatchNorm2d(out_channels)) if batchnorm else conv

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return x


class TokenAdapter(nn.Module):
    """(N, Ls, Ds) → (N, Lt, Dt) or (N, Ds) → (N, Dt): linear on the last axis, tokens interpolated.

    Args:
        in_features: student width.
        out_features: teacher width.
        tokens: teacher token count (None for (N, D) features).
    """

    def __init__(self, in_features: int, out_features: int, tokens: int | None = None) -> None:
        super().__init__()
        self.tokens = tokens
        same = in_features == out_features
        self.proj: nn.Module = nn.Identity() if same else nn.Linear(in_features, out_features)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)
        if self.tokens is not None and x.shape[1] != self.tokens:  # (N, L, D): interpolate along L
            x = F.interpolate(x.transpose(1, 2), size=self.tokens, mode="linear", align_corners=False)
            x = x.transpose(1, 2)
        return x


def build_adapter(student_shape: Iterable[int], teacher_shape: Iterable[int], *, student_layer: str,
                  teacher_layer: str, batchnorm: bool = False) -> nn.Module:
    """The adapter mapping a student feature of `student_shape` to `teacher_shape` (batch axis included).

    Args:
        student_shape: probed student feature shape, e.g. (2, 24, 4, 4).
        teacher_shape: probed teacher feature shape, e.g. (2, 256, 2, 2).
        student_layer: student layer name, for the error message.
        teacher_layer: teacher layer name, for the error message.
        batchnorm: add BatchNorm after a 1x1 conv.

    Returns:
        `nn.Identity`, a `ConvAdapter` or a `TokenAdapter`.

    Raises:
        KdtoolError: the two shapes cannot be paired sensibly.
    """
    s, t = tuple(student_shape), tuple(teacher_shape)
    if s[1:] == t[1:]:
        return nn.Identity()
    if len(s) == len(t) == 4:
        return ConvAdapter(s[1], t[1], (t[2], t[3]), batchnorm)
    if len(s) == len(t) == 3:
        return TokenAdapter(s[2], t[2], t[1])
    if len(s) == len(t) == 2:
        return TokenAdapter(s[1], t[1])
    raise KdtoolError(f"cannot map student layer {student_layer!r} {s} to teacher layer {teacher_layer!r} "
                      f"{t}",
                      "pair layers of the same kind: (N, C, H, W) with (N, C, H, W), tokens (N, L, D) with "
                      "tokens, or (N, D) with (N, D)")


@torch.no_grad()
def probe(model: nn.Module, names: Iterable[str], example: Tensor,
          role: str) -> tuple[Tensor, dict[str, Tensor]]:
    """Run `model` once in eval mode on `example`; return its output and the named layers' outputs.

    The dry run that adapters are sized from. The model's train/eval mode is restored
    afterwards; its weights are not changed.

    Args:
        model: student or teacher.
        names: layer names (module paths).
        example: one input batch for this model (its own preprocessing applied).
        role: "student" or "teacher", for error messages.

    Returns:
        (output, {layer name: feature}), without grad.

    Raises:
        KdtoolError: a name is not a layer of the model, or the layer did not run in a forward pass.
    """
    names = list(names)
    hooks = capture(model, names, role)
    was_training = model.training
    model.eval()
    try:
        with hooks as feats:
            output = model(example)
    finally:
        model.train(was_training)
    missing = [n for n in names if n not in feats]
    if missing:
        raise KdtoolError(f"{role} layer {missing[0]!r} did not run in a forward pass",
                          "pick a layer the model uses")
    return output, dict(feats)
