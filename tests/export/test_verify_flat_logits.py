"""Int8 parity failures on near-flat logits (random-initialised weights) say so in the reason."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from export.verify import check_parity


class Logits(nn.Module):
    """Fixed class logits per sample: `margin` between the top class and the rest."""

    def __init__(self, margin: float) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 4) -> (N, 4)
        return self.margin * torch.nn.functional.one_hot(x.argmax(dim=1), 4).float() + 1.0


def _noisy(model: nn.Module, noise: float):
    gen = torch.Generator().manual_seed(0)

    def run(x: np.ndarray) -> np.ndarray:
        y = model(torch.from_numpy(x))
        return (y + noise * torch.randn(y.shape, generator=gen)).numpy()
    return run


def test_flat_logits_failure_names_untrained_weights():
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    model = Logits(margin=0.01)  # decisions 0.01 apart, int8-sized noise 0.3
    p = check_parity(_noisy(model, 0.3), model, x[:2], "int8", inputs=x)
    assert p.status == "failed"
    assert "median decision margin 0.01 is below the int8 error" in p.reason
    assert "random-initialised" in p.reason


def test_trained_logits_failure_does_not_blame_the_weights():
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    model = Logits(margin=10.0)
    p = check_parity(lambda a: -_noisy(model, 0.0)(a), model, x[:2], "int8", inputs=x)  # reversed ranking
    assert p.status == "failed" and "random-initialised" not in p.reason
    fp32 = Logits(margin=0.01)
    assert "random-initialised" not in (check_parity(_noisy(fp32, 0.3), fp32, x[:2], "fp32").reason or "")


def test_flat_logits_lost_to_the_fp32_student_are_named_even_when_the_file_matches_its_pt2e_model():
    """ExecuTorch int8 is compared with its PT2E model (an error of the lowering alone, here 0) and its
    decisions with the fp32 student's: on near-flat student logits the flipped decisions come from int8
    rounding against the student, and the reason says so."""
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    student = Logits(margin=0.01)

    def pt2e(a: torch.Tensor) -> torch.Tensor:  # the student plus a fixed int8-sized rounding error
        return student(a) + 0.3 * torch.sin(37.0 * a)

    p = check_parity(lambda a: pt2e(torch.from_numpy(a)).numpy(), pt2e, x[:2], "int8", inputs=x, student=student)
    assert p.status == "failed" and p.failed == ["fp32_agreement"] and p.max_abs == 0.0
    assert "median decision margin 0.01 is below the int8 error" in p.reason
