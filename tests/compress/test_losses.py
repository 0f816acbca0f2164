"""KD losses against their formulas on hand-made tensors, and every registered loss on extreme inputs."""

from __future__ import annotations

import math

import pytest
import torch

from compress.core.errors import KdtoolError
from compress.core.tasks import Task
from compress.distill.losses import LOSSES, build_loss

TEMPERATURES = (0.5, 1.0, 4.0, 20.0)
HAND_KL = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # KL([.75, .25] ‖ [.5, .5]) = 0.1308


def _inputs(name: str, scale: float = 1.0, dtype: torch.dtype = torch.float32, seed: int = 0):
    """Student/teacher tensors of the kind the loss compares, and class targets."""
    g = torch.Generator().manual_seed(seed)
    kind = LOSSES.get(name).applies_to
    shape = (4, 5) if kind in ("logits", "outputs") else (4, 6, 3, 3)
    s = torch.randn(shape, generator=g) * scale
    t = torch.randn(shape, generator=g) * scale
    return s.to(dtype), t.to(dtype), torch.tensor([0, 1, 2, 3])


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_is_zero_when_student_equals_teacher(name):
    s, _, y = _inputs(name)
    for temperature in TEMPERATURES:
        value = build_loss(name)(s, s.clone(), temperature=temperature, targets=y)
        assert value.dim() == 0 and value.dtype == torch.float32
        assert abs(value.item()) < 1e-5, (name, temperature, value.item())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_is_finite_with_finite_gradients_on_extreme_inputs(name, dtype):
    for temperature in TEMPERATURES:
        s, t, y = _inputs(name, scale=1e4)  # values of order ±1e4, kept inside fp16's range
        s = s.clamp(-6e4, 6e4).to(dtype).requires_grad_(True)
        t = t.clamp(-6e4, 6e4).to(dtype)
        value = build_loss(name)(s, t, temperature=temperature, targets=y)
        value.backward()
        assert torch.isfinite(value), (name, dtype, temperature)
        assert value.item() > 0, (name, dtype, temperature)
        assert torch.isfinite(s.grad.float()).all(), (name, dtype, temperature)


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_has_a_docstring_citing_its_formula(name):
    doc = LOSSES.get(name).__doc__
    assert "loss =" in doc and len(LOSSES.describe()[name]) > 20


def test_kl_matches_hand_computed_two_class_value():
    student = torch.tensor([[0.0, 0.0]])  # p_s = [.5, .5]
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # p_t = [.75, .25]
    value = build_loss("kl")(student, teacher, temperature=1.0, targets=None)
    assert value.item() == pytest.approx(HAND_KL, 1e-6)


def test_kl_scales_with_temperature_squared():
    # Same softened distributions at T=2 (logits doubled): the value is 2² times the T=1 one.
    student = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    teacher = torch.tensor([[2 * math.log(3.0), 0.0], [2 * math.log(3.0), 0.0]])
    value = build_loss("kl")(student, teacher, temperature=2.0, targets=None).item()
    assert value == pytest.approx(4 * HAND_KL, 1e-6)  # batchmean: two equal rows average to one


def test_kl_refuses_one_logit_and_regression_tasks():
    build_loss("kl").check_task(Task("binary", 2))
    for task in (Task("binary", 1), Task("regression", 2)):
        with pytest.raises(KdtoolError, match="kl"):
            build_loss("kl").check_task(task)


def test_bce_kd_matches_bernoulli_kl_and_pulls_student_toward_teacher():
    student = torch.tensor([[0.0]], requires_grad=True)  # σ = .5
    teacher = torch.tensor([[math.log(3.0)]])  # σ = .75
    value = build_loss("bce_kd")(student, teacher, temperature=1.0, targets=None)
    assert value.item() == pytest.approx(HAND_KL, 1e-6)
    value.backward()
    assert student.grad.item() < 0  # gradient descent raises the student logit toward the teacher's
    at_t2 = build_loss("bce_kd")(torch.zeros(1, 1), 2 * teacher, temperature=2.0, targets=None)
    assert at_t2.item() == pytest.approx(4 * HAND_KL, 1e-6)


def test_mse_and_l1_on_outputs():
    s, t = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]])
    assert build_loss("mse")(s, t, temperature=4.0, targets=None).item() == pytest.approx(2.5)
    assert build_loss("l1")(s, t, temperature=4.0, targets=None).item() == pytest.approx(1.5)


def test_dkd_equals_its_formula_on_a_hand_case():
    student = torch.zeros(1, 3)  # p_s = [1/3]*3: b_s = [1/3, 2/3], p̂_s = [1/2, 1/2]
    teacher = torch.log(torch.tensor([[3.0, 1.0, 2.0]]))  # p_t = [1/2, 1/6, 1/3]
    # target 0: b_t = [1/2, 1/2], p̂_t = [1/3, 2/3]
    tckd = 0.5 * math.log(0.5 / (1 / 3)) + 0.5 * math.log(0.5 / (2 / 3))
    nckd = (1 / 3) * math.log((1 / 3) / 0.5) + (2 / 3) * math.log((2 / 3) / 0.5)
    loss = build_loss("dkd", {"alpha": 1.0, "beta": 8.0})
    value = loss(student, teacher, temperature=1.0, targets=torch.tensor([0]))
    assert value.item() == pytest.approx(tckd + 8 * nckd, 1e-6)
    at_t2 = loss(student, 2 * teacher, temperature=2.0, targets=torch.tensor([0]))
    assert at_t2.item() == pytest.approx(4 * (tckd + 8 * nckd), 1e-5)


def test_dkd_refuses_binary_outputs_and_missing_targets():
    for task in (Task("binary", 1), Task("binary", 2), Task("multilabel", 5)):
        with pytest.raises(KdtoolError, match="dkd"):
            build_loss("dkd").check_task(task)
    with pytest.raises(KdtoolError, match="3 classes"):
        build_loss("dkd")(torch.zeros(2, 2), torch.zeros(2, 2), temperature=1.0, targets=torch.tensor([0, 1]))
    with pytest.raises(KdtoolError, match="targets"):
        build_loss("dkd")(torch.zeros(2, 4), torch.zeros(2, 4), temperature=1.0, targets=None)


def test_fitnet_is_mse_and_needs_equal_shapes():
    t = torch.randn(2, 4, 3, 3)
    assert build_loss("fitnet")(t + 1, t, temperature=1.0, targets=None).item() == pytest.approx(1.0)
    with pytest.raises(KdtoolError, match="adapter"):
        build_loss("fitnet")(torch.zeros(2, 3, 3, 3), t, temperature=1.0, targets=None)


def test_attention_known_values_channel_and_size_invariance():
    at = build_loss("attention")
    s = torch.tensor([[[[1.0, 0.0]]]])  # map [1, 0]
    t = torch.tensor([[[[1.0, 1.0]]]])  # map [1, 1] / √2
    assert at(s, t, temperature=1.0, targets=None).item() == pytest.approx(1 - 1 / math.sqrt(2), 1e-6)
    feat = torch.rand(2, 8, 4, 4)
    # Channel count and overall scale do not matter: only where the energy is.
    assert at(feat.repeat(1, 2, 1, 1) * 3, feat, temperature=1.0, targets=None).item() < 1e-10
    # A constant 2x2 student map against a constant 4x4 teacher map: interpolated, equal.
    assert at(torch.ones(2, 3, 2, 2), torch.ones(2, 5, 4, 4), temperature=1.0, targets=None).item() < 1e-10
    # Tokens (N, L, D): the map is over the L tokens.
    tokens_s, tokens_t = torch.tensor([[[1.0], [0.0]]]), torch.tensor([[[1.0, 1.0], [1.0, 1.0]]])
    value = at(tokens_s, tokens_t, temperature=1.0, targets=None)
    assert value.item() == pytest.approx(1 - 1 / math.sqrt(2), 1e-6)
    assert at(torch.ones(2, 3, 4), torch.ones(2, 6, 8), temperature=1.0, targets=None).item() < 1e-10
    with pytest.raises(KdtoolError, match="same kind"):
        at(torch.ones(2, 3, 4, 4), torch.ones(2, 16, 3), temperature=1.0, targets=None)


def test_rkd_distance_known_value_and_invariances():
    line = torch.tensor([[0.0], [1.0], [2.0]])  # distances 1, 2, 1 → normalized .75, 1.5, .75
    triangle = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])  # all 1
    distance_only = build_loss("rkd", {"distance_weight": 1.0, "angle_weight": 0.0})
    # Huber(·) of diffs −.25, .5, −.25 (each twice) over 9 entries: 2·(.03125 + .125 + .03125) / 9
    assert distance_only(line, triangle, temperature=1.0, targets=None).item() == pytest.approx(1 / 24, 1e-5)
    feats = torch.randn(6, 5)
    rkd = build_loss("rkd")
    assert rkd(3 * feats, feats, temperature=1.0, targets=None).item() < 1e-6  # scale-invariant
    wide = torch.cat([feats, torch.zeros(6, 7)], 1)  # other width, same geometry
    assert rkd(wide, feats, temperature=1.0, targets=None).item() < 1e-6
    assert rkd(torch.randn(6, 5), feats, temperature=1.0, targets=None).item() > 1e-3


def test_sp_known_value_and_invariances():
    orthogonal = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # G = I
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # G rows normalized to [1/√2, 1/√2]
    value = build_loss("sp")(orthogonal, same, temperature=1.0, targets=None).item()
    assert value == pytest.approx((2 * (1 - 1 / math.sqrt(2)) ** 2 + 2 * 0.5) / 4, 1e-6)
    feats = torch.randn(4, 3, 2, 2)
    assert build_loss("sp")(2 * feats, feats, temperature=1.0, targets=None).item() < 1e-10


def test_build_loss_rejects_unknown_names_and_parameters():
    with pytest.raises(KdtoolError, match="unknown KD loss 'fitnets'") as err:
        build_loss("fitnets")
    assert "fitnet" in err.value.hint
    with pytest.raises(KdtoolError, match="no parameter 'gamma'") as err:
        build_loss("dkd", {"gamma": 2.0})
    assert "alpha, beta" in err.value.hint


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kl_of_a_distribution_with_itself_is_zero_even_for_extreme_logits(dtype):
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]], dtype=dtype)
    for temperature in TEMPERATURES:
        assert build_loss("kl")(logits, logits, temperature=temperature, targets=None).item() == 0.0


@pytest.mark.parametrize("name", list(LOSSES))
def test_losses_stay_fp32_under_autocast(name):
    s, t, y = _inputs(name, scale=3.0)
    plain = build_loss(name)(s, t, temperature=4.0, targets=y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = build_loss(name)(s.bfloat16(), t.bfloat16(), temperature=4.0, targets=y)
    assert autocast.dtype == torch.float32
    assert autocast.item() == pytest.approx(plain.item(), rel=0.05, abs=1e-3)  # only the bf16 inputs differ
