"""QAT reads its whole `quantize.qat` training section through the shared `TrainStep`.

Each key the recipe validates must change what QAT does: the same tiny student (no BatchNorm: PT2E's
conv-BN folding is slow), the same digits batches, one setting changed at a time, and the converted
int8 model's outputs (or the run's outcome) differ from the default run's.
"""

from __future__ import annotations

import pytest
import torch
from kd_fixtures import PRE, TASK, digits, tiny_net

from compress.core.errors import NonFiniteLossError
from compress.data.loader import make_loader
from compress.quant.qat import qat_distill, qat_train_config
from compress.quant.quantize import Int8QATConfig
from recipes.schema import QATTrainConfig, QuantizeConfig

pytestmark = pytest.mark.usefixtures("one_thread")
EPOCHS, LR = 1, 5e-3


@pytest.fixture(scope="module")
def data():
    _, train, val = digits(limit=80, crop_pad=0)
    x = PRE(next(iter(make_loader(val, 32, False, seed=0)))[0])
    return train, x


def _qat(data, loss_fn=None, **train) -> tuple[torch.Tensor, list[dict]]:
    """QAT of a fresh tiny student with `quantize.qat` keys `train`; (int8 outputs on validation, history)."""
    train_ds, x = data
    student = tiny_net(0, width=4).module.eval()
    config = Int8QATConfig(epochs=EPOCHS, lr=LR, train=QATTrainConfig(**{"scheduler": "constant", **train}))
    loader = make_loader(train_ds, 32, True, seed=0)
    qm = qat_distill(student, None, loader, PRE, PRE, TASK, epochs=EPOCHS, lr=LR, config=config, loss_fn=loss_fn)
    return qm.module(x).detach(), qm.meta["qat_history"]


@pytest.fixture(scope="module")
def default(data):
    return _qat(data)


SLOW = pytest.mark.slow  # each QAT run exports, prepares and converts (~5-10 s on 2 shared cores)


@pytest.mark.parametrize("key", [{"scheduler": "cosine"}, pytest.param({"optimizer": "sgd"}, marks=SLOW),
                                 pytest.param({"optimizer": "sam"}, marks=SLOW),
                                 pytest.param({"grad_clip": 0.01}, marks=SLOW)],
                         ids=lambda k: "=".join(map(str, next(iter(k.items())))))
def test_each_training_key_changes_qat(data, default, key):
    out, history = _qat(data, **key)
    assert torch.isfinite(out).all()
    assert not torch.equal(out, default[0]), f"quantize.qat {key} did not change the QAT model"


@SLOW
def test_default_qat_is_repeatable(data, default):
    """The comparisons above are meaningful: the same settings give the same int8 model."""
    out, history = _qat(data)
    assert torch.equal(out, default[0]) and history == default[1]


def _nan_first_batch():
    """A loss that is NaN on its first call only (a bad batch), the hard loss after."""
    calls = {"n": 0}

    def loss(s_out, t_out, y):
        calls["n"] += 1
        value = TASK.hard_loss(s_out, y)
        return value * float("nan") if calls["n"] == 1 else value

    return loss


@SLOW
def test_nan_policy_and_max_bad_steps(data):
    with pytest.raises(NonFiniteLossError, match="quantize qat: non-finite loss at epoch 1 step 1"):
        _qat(data, loss_fn=_nan_first_batch())
    out, history = _qat(data, loss_fn=_nan_first_batch(), nan_policy="skip", max_bad_steps=1)
    assert torch.isfinite(out).all() and len(history) == EPOCHS
    with pytest.raises(NonFiniteLossError):
        _qat(data, loss_fn=_nan_first_batch(), nan_policy="skip", max_bad_steps=0)


def test_train_config_replaces_epochs_lr_weight_decay():
    cfg = qat_train_config(Int8QATConfig(epochs=3, lr=1e-3, weight_decay=0.1,
                                         train=QATTrainConfig(epochs=9, lr=9.0, scheduler="cosine")), 3, 1e-3)
    assert (cfg.epochs, cfg.lr, cfg.weight_decay, cfg.scheduler) == (3, 1e-3, 0.1, "cosine")
    assert qat_train_config(Int8QATConfig(), 2, 1e-4).scheduler == "constant"  # the API default: a fixed lr


@pytest.mark.parametrize("key", [{"init": "scratch"}, {"ema_decay": 0.9}, {"amp": "bf16"}, {"device": "cuda"},
                                 {"label_smoothing": 0.1}], ids=str)
def test_qat_refuses_what_it_cannot_honour(key):
    with pytest.raises(ValueError, match=f"quantize.qat.{next(iter(key))} cannot be honoured"):
        QuantizeConfig(qat=key)


def test_api_train_settings_qat_cannot_honour_are_refused():
    from compress.core.errors import KdtoolError
    from recipes.schema import TrainConfig

    with pytest.raises(KdtoolError, match="Int8QATConfig.train: quantize.qat.ema_decay cannot be honoured"):
        qat_train_config(Int8QATConfig(train=TrainConfig(ema_decay=0.9)), 2, 1e-4)
