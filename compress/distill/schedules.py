"""Alpha / temperature schedules over epochs: constant, linear, or a step table.

The deepfake guide's progressive alpha (0.95 → 0.50 over 20 epochs), in a recipe::

    alpha_schedule: {kind: linear, start: 0.95, end: 0.50, epochs: 20}
    alpha_schedule: {kind: step, steps: {1: 0.95, 6: 0.85, 11: 0.75, 16: 0.65, 21: 0.50}}
"""

from __future__ import annotations

from typing import Any


def value_at(schedule: Any | None, default: float, epoch: int) -> float:
    """The scheduled value for a 1-based `epoch`.

    - None or `constant`: `schedule.start` when set, else `default`.
    - `linear`: `start` at epoch 1, `end` at epoch `epochs`, straight line between, `end` after.
    - `step`: the value of the largest `first_epoch <= epoch` in `steps`; `default` before the first.

    Args:
        schedule: a `recipes.schema.ScheduleConfig`, or None.
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
