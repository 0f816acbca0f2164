"""SAM around AdamW/SGD on a tiny regression."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.distill.sam import SAM


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 5, generator=g)
    w = torch.tensor([[1.0, -2.0, 0.5, 3.0, 0.0]])
    y = x @ w.t() + 0.01 * torch.randn(64, 1, generator=g)
    torch.manual_seed(seed)
    return nn.Linear(5, 1), x, y


def test_first_step_climbs_rho_along_the_gradient_and_second_step_takes_the_base_step_from_w():
    model, x, y = _problem()
    lr, rho = 0.1, 0.05
    sam = SAM(model.parameters(), torch.optim.SGD, rho=rho, lr=lr)
    w0 = [p.detach().clone() for p in model.parameters()]
    nn.functional.mse_loss(model(x), y).backward()
    g0 = [p.grad.clone() for p in model.parameters()]
    sam.first_step(zero_grad=True)
    eps = [p.detach() - w for p, w in zip(model.parameters(), w0, strict=True)]
    norm = torch.cat([e.flatten() for e in eps]).norm()
    assert norm.item() == pytest.approx(rho, rel=1e-5)  # ‖ε‖ = ρ
    for e, g in zip(eps, g0, strict=True):  # ε ∥ g
        torch.testing.assert_close(e, rho * g / torch.cat([h.flatten() for h in g0]).norm())
    nn.functional.mse_loss(model(x), y).backward()  # gradient at w + ε
    g_adv = [p.grad.clone() for p in model.parameters()]
    sam.second_step(zero_grad=True)
    for p, w, g in zip(model.parameters(), w0, g_adv, strict=True):  # plain SGD from w with g(w + ε)
        torch.testing.assert_close(p.detach(), w - lr * g)
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_with_adamw_decreases_the_loss(adaptive):
    model, x, y = _problem(1)
    sam = SAM(model.parameters(), torch.optim.AdamW, rho=0.05, adaptive=adaptive, lr=0.05, weight_decay=0.0)
    start = nn.functional.mse_loss(model(x), y).item()
    for _ in range(100):
        nn.functional.mse_loss(model(x), y).backward()
        sam.first_step(zero_grad=True)
        nn.functional.mse_loss(model(x), y).backward()
        sam.second_step(zero_grad=True)
    end = nn.functional.mse_loss(model(x), y).item()
    assert end < 0.05 * start, (start, end)


def test_step_with_closure_state_dict_and_lr_scheduler():
    model, x, y = _problem(2)
    sam = SAM(model.parameters(), torch.optim.AdamW, rho=0.05, lr=0.05)
    scheduler = torch.optim.lr_scheduler.StepLR(sam, step_size=1, gamma=0.5)

    def closure():
        sam.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    start = closure().item()
    for _ in range(20):
        closure()
        sam.step(closure)
    assert nn.functional.mse_loss(model(x), y).item() < start
    scheduler.step()
    assert sam.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.025)  # the scheduler drives the base
    state = sam.state_dict()
    assert state["state"][0]["exp_avg"].shape == (1, 5)  # AdamW moments are checkpointed
    fresh = SAM(model.parameters(), torch.optim.AdamW, rho=0.05, lr=0.05)
    fresh.load_state_dict(state)
    assert fresh.param_groups is fresh.base_optimizer.param_groups and fresh.param_groups[0]["lr"] == 0.025
    with pytest.raises(ValueError, match="closure"):
        sam.step()
