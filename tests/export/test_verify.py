"""The shared parity check: tolerances per precision, batches, agreement, failures with numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from export_fixtures import tiny_convnet

from compress.core.errors import ExportError
from export.artifact import Artifact, Parity
from export.verify import TOLERANCES, check_parity, require_passed


def _runner(model, noise: float = 0.0, offset: float = 0.0):
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            y = model(torch.from_numpy(x))
        return (y + noise * torch.randn_like(y) + offset).numpy()
    return run


def test_identical_model_passes_at_two_batch_sizes(example, real_inputs):
    model = tiny_convnet()
    p = check_parity(_runner(model), model, example, "fp32", inputs=real_inputs)
    assert p.status == "passed" and p.max_abs < 1e-6 and p.agreement == 1.0
    assert p.batches == [1, 4] and p.samples == 16 and p.atol == pytest.approx(1e-3 * p.max_abs / p.max_rel)


def test_offset_beyond_fp32_tolerance_fails_with_numbers(example):
    model = tiny_convnet()
    scale = float(model(torch.randn(8, 1, 32, 32)).abs().max())
    p = check_parity(_runner(model, offset=1e-2 * scale), model, example, "fp32")
    assert p.status == "failed" and p.max_abs == pytest.approx(1e-2 * scale, rel=0.5)
    assert "max_abs" in p.reason and "fp32" in p.reason
    # the same error is within the fp16 bound
    assert check_parity(_runner(model, offset=1e-2 * scale), model, example, "fp16").status == "passed"


def test_fp32_bound_is_executorchs_own_and_still_catches_a_shift(example, real_inputs):
    """XNNPACK's fp32 kernels differ by ~1e-4 of the output scale on a deep net: that passes; an
    artifact off by 1 % of the scale (a wrong constant, a shifted normalisation) does not."""
    model = tiny_convnet()
    scale = float(model(real_inputs).abs().max())
    kernels = check_parity(_runner(model, noise=2e-4 * scale), model, example, "fp32", inputs=real_inputs)
    assert kernels.status == "passed" and kernels.max_rel < 1e-3
    shifted = check_parity(_runner(model, offset=1e-2 * scale), model, example, "fp32", inputs=real_inputs)
    assert shifted.status == "failed" and shifted.failed[0] == "max_abs"


def test_int8_against_the_fp32_model_is_judged_on_decisions(example, real_inputs):
    """An int8 file with no simulated reference (ONNX Runtime QDQ) differs from fp32 by its whole
    quantization error: a large max_abs with the same decisions passes the "int8 vs fp32" bounds,
    not the simulated-reference ones; flipped decisions fail both."""
    model = tiny_convnet()
    scale = float(model(real_inputs).abs().max())
    noisy = _runner(model, offset=0.5 * scale)  # every logit moves alike: decisions unchanged
    simulated = check_parity(noisy, model, example, "int8", inputs=real_inputs)
    assert simulated.status == "failed" and "max_abs" in simulated.failed
    versus_fp32 = check_parity(noisy, model, example, "int8", inputs=real_inputs, int8_reference=False)
    assert versus_fp32.status == "passed" and versus_fp32.agreement == 1.0 and versus_fp32.max_rel > 0.25
    flipped = check_parity(lambda x: -_runner(model)(x), model, example, "int8", inputs=real_inputs,
                           int8_reference=False)
    assert flipped.status == "failed" and "agreement" in flipped.failed
    broken = check_parity(_runner(model, offset=2 * scale), model, example, "int8", inputs=real_inputs,
                          int8_reference=False)
    assert broken.status == "failed" and "max_abs" in broken.failed


def test_int8_that_matches_its_pt2e_model_must_still_keep_the_fp32_students_decisions(example, real_inputs):
    """ExecuTorch int8 is compared with its PT2E model (the lowering) and its decisions with the fp32
    student's (what it replaces): a file identical to a PT2E model that flips the student's decisions
    fails on `fp32_agreement` alone; one that keeps them passes with the agreement recorded."""
    student = tiny_convnet()

    def pt2e_flipped(x: torch.Tensor) -> torch.Tensor:
        return -student(x)

    flipped = check_parity(_runner(pt2e_flipped), pt2e_flipped, example, "int8", inputs=real_inputs,
                           student=student)
    assert flipped.status == "failed" and flipped.failed == ["fp32_agreement"]
    assert flipped.agreement == 1.0 and flipped.fp32_agreement < 0.5 and "fp32 student" in flipped.reason
    kept = check_parity(_runner(student), student, example, "int8", inputs=real_inputs, student=student)
    assert kept.status == "passed" and kept.fp32_agreement is None  # the student is the reference: one check
    twin = tiny_convnet()
    twin.load_state_dict(student.state_dict())
    same = check_parity(_runner(twin), twin, example, "int8", inputs=real_inputs, student=student)
    assert same.status == "passed" and same.fp32_agreement == 1.0


def test_tolerances_loosen_with_precision():
    assert TOLERANCES["fp32"].rel < TOLERANCES["fp16"].rel < TOLERANCES["int8"].rel
    assert TOLERANCES["fp32"].min_agreement > TOLERANCES["int8"].min_agreement


def test_wrong_classes_fail_agreement_even_with_loose_tolerance(example):
    model = tiny_convnet()
    p = check_parity(lambda x: -_runner(model)(x), model, example, "int8")  # reversed ranking
    assert p.status == "failed" and p.agreement < 0.5


def test_regression_uses_normalised_mae(example):
    model = tiny_convnet()
    p = check_parity(_runner(model), model, example, "fp32", task="regression")
    assert p.status == "passed" and p.agreement == pytest.approx(1.0)


def test_static_batch_runs_only_its_batch(example):
    model = tiny_convnet()
    seen = set()

    def run(x):
        seen.add(len(x))
        return _runner(model)(x)

    p = check_parity(run, model, example, "fp32", dynamic_batch=False, random_samples=5)
    assert p.status == "passed" and p.batches == [2] and seen == {2}


def test_artifact_that_crashes_is_failed(example):
    def run(x):
        raise RuntimeError("shape mismatch in node conv_3")

    p = check_parity(run, tiny_convnet(), example, "fp32")
    assert p.status == "failed" and "conv_3" in p.reason


def test_require_passed_raises_export_error_with_numbers(tmp_path):
    art = Artifact(name="m.onnx.fp32", format="onnx", precision="fp32", path=tmp_path / "m.onnx",
                   runtime="onnxruntime",
                   parity=Parity(status="failed", max_abs=0.5, reason="max_abs 0.5 > atol 1e-4"))
    with pytest.raises(ExportError, match="0.5") as e:
        require_passed(art)
    assert e.value.exit_code == 4
