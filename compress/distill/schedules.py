"""Alpha / temperature schedules over epochs, and the learning-rate schedule with its warm-up.

The learning rate (`train.scheduler`, `train.warmup_epochs`) is stepped per batch by `lr_scheduler`.

The deepfake guide's progressive alpha (0.95 → 0.50 over 20 epochs), in a recipe::

    alpha_schedule: {kind: linear, start: 0.95, end: 0.50, epochs: 20}
    alpha_schedule: {kind: step, steps: {1: 0.95, 6: 0.85, 11: 0.75, 16: 0.65, 21: 0.50}}
"""

from __future__ import annotations

import math

import torch

from recipes.schema import DistillConfig, ScheduleConfig, TrainConfig

WARMUP_START = 0.01
"""Warm-up starts at this fraction of `train.lr` (timm's `warmup_lr_init` relative to the base lr)."""


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


def lr_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int,
                 steps_per_epoch: int = 1) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-batch learning-rate schedule of a `TrainConfig`: one-cycle, cosine or constant, with warm-up.

    `cfg.warmup_epochs` > 0 (fractions allowed) rises linearly from `WARMUP_START · lr` to `lr` over
    that many epochs, then follows the schedule at the same step count (timm's schedulers with
    `warmup_prefix=False`). One-cycle has its own rising phase: warm-up sets its length (`pct_start`,
    25 % of the steps when unset).

    Args:
        optimizer: the optimizer (a SAM wrapper's base optimizer is scheduled).
        cfg: a `recipes.schema.TrainConfig` (scheduler, lr, warmup_epochs).
        total_steps: optimizer steps in the whole stage.
        steps_per_epoch: optimizer steps per epoch (converts warm-up epochs to steps).
    """
    base = getattr(optimizer, "base_optimizer", optimizer)
    total_steps = max(1, total_steps)
    warmup = min(total_steps, round(cfg.warmup_epochs * steps_per_epoch)) if cfg.warmup_epochs else 0
    if cfg.scheduler == "onecycle":
        # OneCycleLR divides by zero when the warm-up phase is under one step (≤ 4 steps in all): stretch it
        pct_start = 0.25 if total_steps > 4 else min(0.9, 1.5 / total_steps)
        if warmup:
            pct_start = min(0.9, max(pct_start if total_steps <= 4 else 0.0, warmup / total_steps))
        return torch.optim.lr_scheduler.OneCycleLR(base, max_lr=cfg.lr, total_steps=total_steps,
                                                   pct_start=pct_start)
    if not warmup:  # no warm-up: the schedules as they always were (resumable state unchanged)
        if cfg.scheduler == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(base, T_max=total_steps)
        return torch.optim.lr_scheduler.LambdaLR(base, lambda _: 1.0)
    cosine = cfg.scheduler == "cosine"

    def factor(step: int) -> float:
        if step < warmup:
            return WARMUP_START + (1.0 - WARMUP_START) * step / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps)) if cosine else 1.0

    return torch.optim.lr_scheduler.LambdaLR(base, factor)


def kd_weights(distill: DistillConfig | None, epoch: int) -> tuple[float, float]:
    """(alpha, temperature) of a 1-based `epoch`: the one place the KD schedules are read.

    Training and QAT both take their weights here; without distillation (teacher training, the
    baseline, QAT on hard labels) the objective ignores them: (1.0, 1.0).
    """
    if distill is None:
        return 1.0, 1.0
    return (value_at(distill.alpha_schedule, distill.alpha, epoch),
            value_at(distill.temperature_schedule, distill.temperature, epoch))
