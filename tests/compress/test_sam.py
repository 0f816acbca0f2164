"""SAM (`train.optimizer: sam`): pytorch-optimizer's SAM around AdamW, as `build_optimizer` builds it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.distill.checkpoint import load_training_state, save_training_state
from compress.distill.trainer import build_optimizer, build_scheduler
from recipes.schema import TrainConfig


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 5, generator=g)
    w = torch.tensor([[1.0, -2.0, 0.5, 3.0, 0.0]])
    y = x @ w.t() + 0.01 * torch.randn(64, 1, generator=g)
    torch.manual_seed(seed)
    return nn.Linear(5, 1), x, y


def _sam(model: nn.Module, **cfg):
    return build_optimizer(list(model.parameters()), TrainConfig(optimizer="sam", **cfg))


def test_first_step_climbs_rho_along_the_gradient_and_second_step_takes_adamw_from_w():
    model, x, y = _problem()
    lr, rho = 0.1, 0.05
    sam = _sam(model, lr=lr, sam_rho=rho, weight_decay=0.0)
    reference = torch.optim.AdamW([nn.Parameter(p.detach().clone()) for p in model.parameters()], lr=lr,
                                  weight_decay=0.0)
    w0 = [p.detach().clone() for p in model.parameters()]
    nn.functional.mse_loss(model(x), y).backward()
    g0 = [p.grad.clone() for p in model.parameters()]
    sam.first_step(zero_grad=True)
    eps = [p.detach() - w for p, w in zip(model.parameters(), w0, strict=True)]
    assert torch.cat([e.flatten() for e in eps]).norm().item() == pytest.approx(rho, rel=1e-5)  # ‖ε‖ = ρ
    for e, g in zip(eps, g0, strict=True):  # ε ∥ g
        torch.testing.assert_close(e, rho * g / torch.cat([h.flatten() for h in g0]).norm())
    nn.functional.mse_loss(model(x), y).backward()  # the gradient at w + ε
    for p, q in zip(reference.param_groups[0]["params"], model.parameters(), strict=True):
        p.grad = q.grad.clone()
    sam.second_step(zero_grad=True)
    reference.step()  # AdamW from w with g(w + ε): its first step moves each weight by lr against the sign
    for p, q, w in zip(model.parameters(), reference.param_groups[0]["params"], w0, strict=True):
        torch.testing.assert_close(p.detach(), q.detach())
        assert (p.detach() - w).abs().max().item() == pytest.approx(lr, rel=1e-3)
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_sam_decreases_the_loss_and_the_scheduler_drives_adamw():
    model, x, y = _problem(1)
    sam = _sam(model, lr=0.05, weight_decay=0.0, scheduler="cosine")
    scheduler = build_scheduler(sam, TrainConfig(optimizer="sam", lr=0.05, scheduler="cosine"), total_steps=100)
    start = nn.functional.mse_loss(model(x), y).item()
    for _ in range(100):
        nn.functional.mse_loss(model(x), y).backward()
        sam.first_step(zero_grad=True)
        nn.functional.mse_loss(model(x), y).backward()
        sam.second_step(zero_grad=True)
        scheduler.step()
    end = nn.functional.mse_loss(model(x), y).item()
    assert end < 0.05 * start, (start, end)
    assert sam.base_optimizer.param_groups[0]["lr"] < 1e-4  # cosine decayed the base optimizer's lr


def test_sam_state_survives_a_checkpoint_round_trip(tmp_path):
    model, x, y = _problem(2)
    sam = _sam(model, lr=0.05, sam_rho=0.1)
    for _ in range(3):
        nn.functional.mse_loss(model(x), y).backward()
        sam.first_step(zero_grad=True)
        nn.functional.mse_loss(model(x), y).backward()
        sam.second_step(zero_grad=True)
    save_training_state(tmp_path / "last", model, None, sam, None, {"epoch": 1})
    fresh_model = nn.Linear(5, 1)
    fresh = _sam(fresh_model, lr=0.05, sam_rho=0.1)
    assert load_training_state(tmp_path / "last", fresh_model, None, fresh, None) is not None
    state = fresh.base_optimizer.state[fresh_model.weight]
    assert int(state["step"]) == 3
    torch.testing.assert_close(state["exp_avg"], sam.base_optimizer.state[model.weight]["exp_avg"])
    assert fresh.param_groups is fresh.base_optimizer.param_groups and fresh.param_groups[0]["rho"] == 0.1
    for m, opt in ((model, sam), (fresh_model, fresh)):  # the same next step from the same state
        nn.functional.mse_loss(m(x), y).backward()
        opt.first_step(zero_grad=True)
        nn.functional.mse_loss(m(x), y).backward()
        opt.second_step(zero_grad=True)
    torch.testing.assert_close(fresh_model.weight.detach(), model.weight.detach())
