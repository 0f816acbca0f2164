"""Alpha / temperature schedules over epochs: constant, linear, or a step table.

The deepfake guide's progressive alpha (0.95 → 0.50 over 20 epochs), in a recipe::

    alpha_schedule: {kind: linear, start: 0.95, end: 0.50, epochs: 20}
    alpha_schedule: {kind: step, steps: {1: 0.95, 6: 0.85, 11: 0.75, 16: 0.65, 21: 0.50}}
"""

from __future__ import annotations

from recipes.schema import DistillConfig, ScheduleConfig


def value_at(schedule: ScheduleConfig | None, default: float, epoch: int) -> float:
    """The scheduled value for a 1-based `epoch`.

    - None or `constant`: `schedule.start` when set, else `default`.
    - `linear`: `start` at epoch 1, `end` at epoch `epochs`, straight line between, `end` after.
    - `step`: the value of the largest `first_epoch <= epoch` in `steps`; `default` before the first.

    Args:
        schedule: the schedule, or None.
        default: the unscheduled value (e.g. `distill.alpha`).
        epoch: the epoch, counting from 1.

    Returns:
        The value for this epoch.

    Raises:
        ValueError: `epoch` < 1 (a caller bug: epochs are 1-based).
    """
    if epoch < 1:
        raise ValueError(f"epochs are 1-based, got {epoch}")
    if schedule is None:
        return float(default)
    if schedule.kind == "constant":
        return float(default if schedule.start is None else schedule.start)
    if schedule.kind == "linear":
        if schedule.epochs <= 1 or epoch >= schedule.epochs:
            return float(schedule.end)
        frac = (epoch - 1) / (schedule.epochs - 1)
        return float(schedule.start + (schedule.end - schedule.start) * frac)
    started = [first for first in schedule.steps if first <= epoch]
    return float(schedule.steps[max(started)]) if started else float(default)


def kd_weights(distill: DistillConfig | None, epoch: int) -> tuple[float, float]:
    """(alpha, temperature) of a 1-based `epoch`: the one place the KD schedules are read.

    Training and QAT both take their weights here; without distillation (teacher training, the
    baseline, QAT on hard labels) the objective ignores them: (1.0, 1.0).
    """
    if distill is None:
        return 1.0, 1.0
    return (value_at(distill.alpha_schedule, distill.alpha, epoch),
            value_at(distill.temperature_schedule, distill.temperature, epoch))
