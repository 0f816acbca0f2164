"""Exact resume: an interrupted run continued with `resume=True` equals the uninterrupted run, bit for bit.

Interruptions are real: a SIGTERM delivered to this process mid-epoch (the loop's handler saves a
mid-epoch state and returns), or an exception mid-epoch standing in for SIGKILL/a crash (only the
previous epoch-end state survives). Compared: every per-epoch history value but wall time, and
the final and best weights (BatchNorm running stats and dropout RNG included).
"""

from __future__ import annotations

import os
import signal

import pytest
import torch
from kd_fixtures import (
    TASK,
    digits,
    distill_cfg,
    model_tensors,
    tiny_net,
    train_cfg,
    without_timing,
)
from torch.utils.data import Dataset

from compress.distill.teacher_cache import TeacherCache
from compress.distill.trainer import fit

EPOCHS, LIMIT, BATCH = 3, 128, 32
pytestmark = pytest.mark.usefixtures("one_thread")


class Tripwire(Dataset):
    """Wraps a dataset; on the `at`-th item read it sends SIGTERM to this process or raises."""

    def __init__(self, ds: Dataset, at: int, action: str) -> None:
        self.ds, self.at, self.action, self.reads = ds, at, action, 0

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        self.reads += 1
        if self.reads == self.at:
            if self.action == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                raise RuntimeError("simulated crash")
        return self.ds[i]


def _run(tmp_path, name: str, kd: str, trip: tuple[int, str] | None = None):
    """Train EPOCHS epochs, interrupted by `trip` (read number, action) and then resumed."""
    data_cfg, train, val = digits(LIMIT, crop_pad=2, hflip=True, batch_size=BATCH)
    cfg = train_cfg(EPOCHS, ema_decay=0.9 if kd.endswith("+ema") else None)
    kd = kd.removesuffix("+ema")
    teacher = cache = distill = None
    if kd != "none":
        teacher, distill = tiny_net(seed=7, width=12), distill_cfg(cache=kd == "cache", views=2)
        if kd == "cache":
            cache = TeacherCache.build(teacher, train, data_cfg, distill.cache, tmp_path / "cache", seed=0)
    out = tmp_path / name

    def go(ds, resume: bool, init_seed: int):
        return fit(tiny_net(seed=init_seed, batchnorm=True, dropout=0.2), ds, val, TASK, cfg, out,
                   data_cfg=data_cfg, teacher=teacher, distill=distill, teacher_cache=cache, resume=resume)

    if trip is None:
        return go(train, False, 1), out
    try:
        first = go(Tripwire(train, *trip), False, 1)
        assert trip[1] == "sigterm" and first.interrupted
    except RuntimeError as err:
        assert trip[1] == "raise" and "simulated crash" in str(err)
    return go(train, True, 99), out  # a fresh student: everything must come from the checkpoint


# 2 reads probe the shapes, then LIMIT reads per epoch; read 2 + LIMIT + BATCH + 5 is in epoch 2, step 2.
MID_EPOCH_2 = 2 + LIMIT + BATCH + 5
LAST_STEP_OF_EPOCH_1 = 2 + LIMIT - 3


@pytest.mark.parametrize(("kd", "trip"), [
    ("none", (MID_EPOCH_2, "raise")),  # crash: resume from the end of epoch 1, replay epoch 2
    ("none", (MID_EPOCH_2, "sigterm")),  # SIGTERM: resume mid-epoch 2
    ("online", (LAST_STEP_OF_EPOCH_1, "sigterm")),  # SIGTERM on an epoch's last step, before validation
    ("cache", (MID_EPOCH_2, "sigterm")),  # teacher cache (2 views, flip + crop): the lookup path
    ("online+ema", (MID_EPOCH_2, "sigterm")),  # EMA weights (train.ema_decay) are part of the state
])
def test_resume_replays_the_uninterrupted_run_exactly(tmp_path, kd, trip):
    straight, straight_dir = _run(tmp_path, "straight", kd)
    resumed, resumed_dir = _run(tmp_path, "resumed", kd, trip)
    assert len(straight.history) == EPOCHS
    assert without_timing(resumed.history) == without_timing(straight.history)
    assert resumed.best_metric == straight.best_metric and resumed.best_epoch == straight.best_epoch
    for name in ("last.safetensors", "best.safetensors"):
        a, b = model_tensors(straight_dir, name), model_tensors(resumed_dir, name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} differs after resume"
    assert any("running_mean" in k for k in a)  # BatchNorm statistics were compared too
    if kd.endswith("+ema"):
        from safetensors.torch import load_file

        a, b = (load_file(str(d / "last.safetensors")) for d in (straight_dir, resumed_dir))
        ema_keys = [k for k in a if k.startswith("ema.")]
        assert ema_keys and all(torch.equal(a[k], b[k]) for k in ema_keys), "EMA weights differ after resume"


def test_grad_scaler_state_is_saved_and_restored(tmp_path):
    """fp16 training's loss scale and growth tracker survive a resume (CPU scaler, same code path as CUDA)."""
    from compress.distill.checkpoint import load_training_state, save_training_state

    model = tiny_net(0).module
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    for grad in (float("inf"), 1.0, 1.0):  # one overflow halves the scale, then two good steps
        scaler.scale(torch.ones(()))  # what `scaler.scale(loss).backward()` starts with
        for p in model.parameters():
            p.grad = torch.full_like(p, grad)
        scaler.step(opt)
        scaler.update()
    assert scaler.get_scale() == 512.0 and scaler._get_growth_tracker() == 2
    save_training_state(tmp_path / "last", model, None, opt, None, {"epoch": 1}, scaler=scaler)
    fresh = torch.amp.GradScaler("cpu", init_scale=65536.0, growth_interval=3)
    meta = load_training_state(tmp_path / "last", tiny_net(1).module, None, torch.optim.SGD(model.parameters(), lr=0.1),
                               None, scaler=fresh)
    assert meta["epoch"] == 1
    assert fresh.get_scale() == 512.0 and fresh._get_growth_tracker() == 2


def test_ema_weights_are_what_is_validated_and_kept(tmp_path):
    """With train.ema_decay the metric, the best checkpoint and the returned model are the averaged weights."""
    from safetensors.torch import load_file

    from compress.distill.trainer import predict

    data_cfg, train, val = digits(LIMIT, crop_pad=2, batch_size=BATCH)
    cfg = train_cfg(2, ema_decay=0.9)
    student = tiny_net(seed=1, batchnorm=True)
    result = fit(student, train, val, TASK, cfg, tmp_path, data_cfg=data_cfg)
    state = load_file(str(tmp_path / "last.safetensors"))
    ema = {k[4:]: v for k, v in state.items() if k.startswith("ema.")}
    raw = {k[6:]: v for k, v in state.items() if k.startswith("model.")}
    assert ema.keys() == raw.keys() and any(not torch.equal(ema[k], raw[k]) for k in ema)
    scored = tiny_net(seed=2, batchnorm=True)
    scored.module.load_state_dict(ema)
    outputs, targets = predict(scored.module, scored.preprocess, val)
    assert TASK.metrics(outputs, targets)["accuracy"] == result.history[-1]["val_accuracy"]
    if result.best_epoch == 2:
        best = load_file(str(tmp_path / "best.safetensors"))
        assert all(torch.equal(best[k], ema[k]) for k in ema)
