"""Alpha/temperature schedules, including the deepfake guide's progressive alpha."""

from __future__ import annotations

import pytest

from compress.distill.schedules import value_at
from recipes.schema import ScheduleConfig

GUIDE_TABLE = {1: 0.95, 6: 0.85, 11: 0.75, 16: 0.65, 21: 0.50}


def test_no_schedule_and_constant():
    assert value_at(None, 0.5, 7) == 0.5
    assert value_at(ScheduleConfig(kind="constant"), 0.5, 3) == 0.5
    assert value_at(ScheduleConfig(kind="constant", start=0.8), 0.5, 3) == 0.8


def test_guide_progressive_alpha_linear_095_to_050_over_20_epochs():
    schedule = ScheduleConfig(kind="linear", start=0.95, end=0.50, epochs=20)
    values = [value_at(schedule, 0.5, epoch) for epoch in range(1, 26)]
    assert values[0] == pytest.approx(0.95) and values[19] == pytest.approx(0.50)
    assert values[10] == pytest.approx(0.95 - 0.45 * 10 / 19)
    assert all(a > b for a, b in zip(values[:19], values[1:20], strict=True))  # strictly decreasing
    assert values[20:] == [pytest.approx(0.50)] * 5  # holds the end value afterwards


def test_guide_step_table_per_epoch():
    schedule = ScheduleConfig(kind="step", steps=GUIDE_TABLE)
    expected = [0.95] * 5 + [0.85] * 5 + [0.75] * 5 + [0.65] * 5 + [0.50] * 10
    assert [value_at(schedule, 0.5, epoch) for epoch in range(1, 31)] == expected


def test_step_before_its_first_entry_uses_the_default_and_epochs_are_one_based():
    schedule = ScheduleConfig(kind="step", steps={3: 8.0, 10: 2.0})  # e.g. a temperature
    assert [value_at(schedule, 4.0, e) for e in (1, 2, 3, 9, 10, 50)] == [4.0, 4.0, 8.0, 8.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="1-based"):
        value_at(schedule, 4.0, 0)


def test_linear_over_one_epoch_is_its_end_value():
    assert value_at(ScheduleConfig(kind="linear", start=1.0, end=3.0, epochs=1), 0.0, 1) == 3.0


def _lrs(scheduler: str, warmup_epochs: float, epochs: int = 4, steps_per_epoch: int = 10) -> list[float]:
    import torch

    from compress.distill.schedules import lr_scheduler
    from recipes.schema import TrainConfig

    cfg = TrainConfig(epochs=epochs, lr=0.1, scheduler=scheduler, warmup_epochs=warmup_epochs)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = lr_scheduler(opt, cfg, epochs * steps_per_epoch, steps_per_epoch)
    out = []
    for _ in range(epochs * steps_per_epoch):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("scheduler", ["cosine", "constant"])
def test_warmup_epochs_rise_linearly_then_follow_the_schedule(scheduler):
    warm, plain = _lrs(scheduler, 1.0), _lrs(scheduler, 0.0)
    assert warm[0] == pytest.approx(0.001)  # WARMUP_START x lr, as timm's warmup_lr_init
    steps = [b - a for a, b in zip(warm[:9], warm[1:10], strict=True)]
    assert steps == [pytest.approx(0.0099)] * 9  # linear over the 10 steps of one epoch
    assert warm[10:] == [pytest.approx(v) for v in plain[10:]]  # then the schedule at the same step
    assert plain[0] == pytest.approx(0.1)  # no warm-up: unchanged


def test_warmup_epochs_set_the_one_cycle_rise():
    warm, plain = _lrs("onecycle", 2.0), _lrs("onecycle", 0.0)
    # the peak ends the rise: 2 of 4 epochs with warm-up, one-cycle's default 25 % without
    assert max(range(40), key=lambda i: warm[i]) == 19 and max(range(40), key=lambda i: plain[i]) == 9
