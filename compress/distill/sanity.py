"""The teacher check made before distilling: a teacher at or below chance is almost always a mistake.

A wrong checkpoint, or `task.labels` in another order than the checkpoint's (`[real, fake]` vs
`[fake, real]`), gives a teacher that scores at or below a constant predictor on validation. KD
from it teaches the student the wrong answers, so kdtool says so on one line before distilling and
repeats it on the report card. For binary tasks the swapped label order is scored too.
"""

from __future__ import annotations

import torch

from compress.core.tasks import Task

FAR_BETTER = 0.1
"""The swapped order scores at least this much higher (absolute) before kdtool suggests it."""


def swapped(task: Task, outputs: torch.Tensor) -> torch.Tensor | None:
    """Binary outputs with the two labels swapped (negated logit, or flipped logit pair); else None."""
    if task.kind != "binary":
        return None
    return -outputs if task.num_outputs == 1 else outputs.flip(-1)


def teacher_warnings(task: Task, outputs: torch.Tensor, targets: torch.Tensor) -> list[str]:
    """One-line warnings when the teacher's primary metric on validation is at or below chance.

    Args:
        task: the task (primary metric, chance level).
        outputs: the teacher's raw validation outputs.
        targets: the validation labels.

    Returns:
        An empty list when the teacher is above chance; else one warning naming the metric, the chance
        level and the likely fix (for binary tasks, whether the swapped label order scores far better).
    """
    metric = task.primary_metric
    value = task.metrics(outputs, targets).get(metric)
    chance = task.chance(metric, targets)
    if value is None or chance is None or value > chance:
        return []
    fix = "check teacher.checkpoint and that task.labels are in the checkpoint's order"
    flipped = swapped(task, outputs)
    if flipped is not None:
        other = task.metrics(flipped, targets).get(metric)
        if other is not None and other >= value + FAR_BETTER and other > chance:
            labels = list(task.labels) if task.labels else ["0", "1"]
            fix = (f"with the labels swapped ({labels[::-1]}) the teacher scores {metric} {other:.4f}: "
                   "reverse task.labels (and the data's label order) to match the checkpoint")
    return [f"teacher {metric} {value:.4f} is at or below chance ({chance:.4f}) on validation: {fix}."]


def gflops(module: torch.nn.Module, x: torch.Tensor) -> float:
    """GFLOPs of one forward pass per sample (`torch.utils.flop_counter`, a multiply-add counts 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(x)
    return counter.get_total_flops() / 1e9 / max(int(x.shape[0]), 1)


def size_warning(teacher: tuple[int, float], student: tuple[int, float]) -> str | None:
    """A warning when the student has at least 90 % of the teacher's params or GFLOPs, else None.

    Args:
        teacher, student: (params, GFLOPs per sample).
    """
    worse = [f"{what} {s:.4g} vs {t:.4g}" for what, t, s in
             (("params (M)", teacher[0] / 1e6, student[0] / 1e6), ("GFLOPs", teacher[1], student[1]))
             if s >= 0.9 * t]
    if not worse:
        return None
    return (f"the student is about as large as the teacher ({'; '.join(worse)}): distillation will not make it "
            "cheaper; choose a smaller student architecture")
