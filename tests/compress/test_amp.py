"""Mixed precision and the training device: fp32 losses under autocast, the fp16 GradScaler, `train.device`.

The CPU tests run everywhere (CPU autocast takes bf16 and fp16; `torch.amp.GradScaler("cpu")` is
the same scaler); the `gpu` ones train on CUDA and skip with the reason elsewhere.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from kd_fixtures import TASK, digits, tiny_net, train_cfg
from safetensors import safe_open

from compress.core.errors import KdtoolError
from compress.distill.checkpoint import STATE_KEY
from compress.distill.distributed import device_for_training
from compress.distill.objective import KDObjective
from compress.distill.trainer import fit
from recipes.load import load_recipe

pytestmark = pytest.mark.usefixtures("one_thread")


def _scaler_state(folder) -> dict | None:
    with safe_open(str(folder / "last.safetensors"), "pt") as f:
        return json.loads(f.metadata()[STATE_KEY])["grad_scaler"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_loss_terms_are_fp32_when_the_student_runs_under_autocast(dtype):
    """Half-precision logits must not make a half-precision cross-entropy (bf16 keeps 8 bits of mantissa)."""
    student = tiny_net(seed=0).module
    x = torch.randn(8, 1, 16, 16)
    objective = KDObjective(TASK, None, student, None, x)
    with torch.autocast("cpu", dtype=dtype):
        logits, feats = objective.student_forward(x)
    assert logits.dtype == dtype  # autocast really ran the student in half precision
    targets = torch.arange(8) % 10
    terms = objective(logits, feats, None, None, targets, alpha=1.0, temperature=1.0)
    assert terms["hard"].dtype == torch.float32
    exact = torch.nn.functional.cross_entropy(logits.float(), targets)
    assert float(terms["hard"]) == pytest.approx(float(exact), rel=1e-6)


def test_fp16_training_keeps_a_grad_scaler_on_the_cpu_too(tmp_path):
    """amp: fp16 scales the loss wherever it trains (fp16 gradients underflow unscaled), and checkpoints the scale."""
    data_cfg, train, val = digits(256, batch_size=32)
    cfg = train_cfg(3, lr=0.02, amp="fp16", device="cpu")
    result = fit(tiny_net(seed=1), train, val, TASK, cfg, tmp_path / "fp16", data_cfg=data_cfg)
    assert all(math.isfinite(r["loss_total"]) for r in result.history)
    assert result.best_metric > 0.4  # it learns (chance 0.1; fp32 and fp16 both reach ~0.8 in 4 epochs)
    state = _scaler_state(tmp_path / "fp16")
    assert state is not None and state["scale"] > 0
    off = fit(tiny_net(seed=1), train, val, TASK, train_cfg(1, device="cpu"), tmp_path / "off", data_cfg=data_cfg)
    assert off.history and _scaler_state(tmp_path / "off") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_train_device_cuda_without_a_gpu_is_a_one_line_input_error():
    with pytest.raises(KdtoolError, match="train.device: cuda, but torch .* sees no CUDA device") as err:
        device_for_training("cuda")
    assert err.value.exit_code == 2 and "\n" not in str(err.value)
    assert device_for_training("cpu").type == device_for_training(None).type == "cpu"


def test_sam_with_fp16_is_refused_naming_the_section():
    with pytest.raises(KdtoolError, match="student.train: optimizer: sam does not work with amp: fp16"):
        load_recipe(None, ["student.train.optimizer=sam", "student.train.amp=fp16"])
    recipe, _, _ = load_recipe(None, ["student.train.optimizer=sam", "student.train.amp=bf16",
                                      "student.train.device=cuda"])
    assert recipe.student.train.device == "cuda"


@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_amp_training_on_cuda_learns_with_finite_losses(tmp_path, amp):
    """A few epochs on the GPU under AMP: finite losses, better than chance; fp16 checkpoints its scaler."""
    data_cfg, train, val = digits(256, batch_size=32)
    student = tiny_net(seed=1)
    cfg = train_cfg(4, lr=0.02, amp=amp, device="cuda")
    result = fit(student, train, val, TASK, cfg, tmp_path / amp, data_cfg=data_cfg)
    assert next(student.module.parameters()).device.type == "cuda"
    assert all(math.isfinite(r["loss_total"]) for r in result.history)
    assert result.best_metric > 0.3  # chance is 0.1
    state = _scaler_state(tmp_path / amp)
    assert (state is not None and state["scale"] > 0) if amp == "fp16" else state is None


@pytest.mark.slow  # a whole CLI start (~15 s alone on 2 cores); the unit test above covers the check itself
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cli_with_train_device_cuda_and_no_gpu_exits_2_with_one_line(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, str(root / "kdtool.py"), "distill", "--out", str(tmp_path),
                           "--set", "teacher.train.device=cuda", "--set", "data.limit=64"], cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root), "KDTOOL_QUIET": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("kdtool: error")]
    assert len(errors) == 1 and "train.device: cuda" in errors[0] and "sees no CUDA device" in errors[0]
