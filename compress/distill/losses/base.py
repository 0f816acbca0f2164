"""What every KD loss shares: the registry, the base class, and construction from a recipe term."""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from compress.core.errors import KdtoolError
from compress.core.registry import Registry

LOSSES: Registry[type[KDLoss]] = Registry("KD loss")
"""Name users write (`kl`, `fitnet`, ...) → loss class. `kdtool ls losses` prints it."""


class KDLoss(nn.Module):
    """A KD loss: `forward(student, teacher, *, temperature, targets) -> scalar` computed in fp32.

    Subclasses set `applies_to` so the objective (and the tests) know what they compare:
    "logits" (class scores), "outputs" (any final outputs, e.g. regression values) or
    "features" (captured layer outputs; also works on logits). `needs_adapter` is True when
    student and teacher tensors must have the same shape (the objective then builds an adapter).
    """

    applies_to: ClassVar[str] = "features"
    needs_adapter: ClassVar[bool] = False

    def __call__(self, student: Tensor, teacher: Tensor, **kwargs: Any) -> Tensor:
        """Run `forward` with autocast off, so matmuls inside losses stay fp32 under AMP too."""
        with torch.autocast(student.device.type, enabled=False):
            return super().__call__(student, teacher, **kwargs)

    def check_task(self, task: Any) -> None:
        """Raise a KdtoolError when this loss is undefined for the task's outputs (default: defined)."""

    def forward(self, student: Tensor, teacher: Tensor, *, temperature: float = 1.0,
                targets: Tensor | None = None) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def build_loss(name: str, params: dict[str, Any] | None = None) -> KDLoss:
    """Instantiate the loss registered as `name` with its `params`.

    Args:
        name: a registered loss name (unknown names raise listing the known ones).
        params: keyword arguments of the loss class (e.g. `{"distance_weight": 1.0}` for rkd).

    Returns:
        The loss module.

    Raises:
        KdtoolError: unknown name, or a parameter the loss does not take.
    """
    cls = LOSSES.get(name)
    params = dict(params or {})
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise KdtoolError(f"KD loss {name!r} has no parameter {unknown[0]!r}",
                          f"its parameters: {', '.join(accepted) or 'none'}")
    return cls(**params)


def flatten_classes(student: Tensor, teacher: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """Cast to fp32 and reshape class-last (..., C) logits to (rows, C), checking shapes match."""
    if student.shape != teacher.shape:
        raise KdtoolError(f"{name}: student output {tuple(student.shape)} and teacher output "
                          f"{tuple(teacher.shape)} differ",
                          "student and teacher need the same number of outputs")
    c = student.shape[-1] if student.dim() > 1 else 1
    return student.float().reshape(-1, c), teacher.float().reshape(-1, c)
