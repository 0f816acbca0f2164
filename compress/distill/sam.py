"""Sharpness-Aware Minimization as a wrapper around a base optimizer.

Foret, Kleiner, Mobahi & Neyshabur, "Sharpness-Aware Minimization for Efficiently Improving
Generalization", ICLR 2021 (arXiv 2010.01412, 2020). Adaptive SAM: Kwon et al., ICML 2021.

Hand-written (after the reference PyTorch port, github.com/davda54/sam, MIT) because neither
torch.optim nor any well-kept library in our dependency set ships SAM.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer


class SAM(Optimizer):
    """SAM: step to the worst nearby weights, take the gradient there, step from the original weights.

        ε = ρ · g / ‖g‖₂         (adaptive: ε = ρ · w² · g / ‖w · g‖₂)
        w ← w + ε;  g' = ∇L(w + ε);  w ← w − ε;  base_optimizer.step(g')

    Each training step runs two forward/backward passes::

        loss_fn(model(x), y).backward()
        sam.first_step(zero_grad=True)      # climb to w + ε
        loss_fn(model(x), y).backward()
        sam.second_step(zero_grad=True)     # back to w, base step with the sharpness-aware gradient

    Its `param_groups` are the base optimizer's, so LR schedulers on the SAM object drive the base.
    With AMP, unscale the gradients (`scaler.unscale_(sam)`) before each step; under DDP both
    backward passes all-reduce as usual. BatchNorm statistics are updated by both passes.

    Args:
        params: parameters (or parameter groups) to optimize.
        base_optimizer: the optimizer class, e.g. `torch.optim.AdamW` or `torch.optim.SGD`.
        rho: neighbourhood radius ρ.
        adaptive: use adaptive SAM (scale-invariant ε).
        **kwargs: arguments of the base optimizer (lr, weight_decay, momentum, ...).
    """

    def __init__(self, params: Iterable[Any], base_optimizer: type[Optimizer], rho: float = 0.05,
                 adaptive: bool = False, **kwargs: Any) -> None:
        if rho <= 0:
            raise ValueError(f"SAM rho must be positive, got {rho}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    @torch.no_grad()
    def _grad_norm(self) -> torch.Tensor:
        """‖g‖₂ over all parameters (‖w·g‖₂ when adaptive), on the first parameter's device."""
        norms = [((p.abs() if group["adaptive"] else 1.0) * p.grad).norm(p=2)
                 for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not norms:
            return torch.zeros(())
        device = norms[0].device
        return torch.stack([n.to(device) for n in norms]).norm(p=2)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move each weight to w + ε (ε from the current gradients) and remember ε."""
        scale_norm = self._grad_norm()
        for group in self.param_groups:
            scale = group["rho"] / (scale_norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                e_w = (p.pow(2) if group["adaptive"] else 1.0) * p.grad * scale.to(p)
                p.add_(e_w)
                self.state[p]["e_w"] = e_w
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Return each weight to w and take the base optimizer's step with the gradients at w + ε."""
        for group in self.param_groups:
            for p in group["params"]:
                e_w = self.state[p].pop("e_w", None)
                if e_w is not None:
                    p.sub_(e_w)
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Both steps; `closure` must run a full forward and backward pass and return the loss.

        Args:
            closure: re-evaluates the model (called once, between the two steps).

        Returns:
            The loss the closure returned at w + ε.
        """
        if closure is None:
            raise ValueError("SAM.step needs a closure (forward + backward); or call first_step/second_step")
        self.first_step(zero_grad=True)
        with torch.enable_grad():
            loss = closure()
        self.second_step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state (moments, step counts); SAM keeps nothing between steps."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load the base optimizer's state, keeping `param_groups` shared with it."""
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
