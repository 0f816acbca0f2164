"""The GPU check's CPU side: the script parses, refuses a machine without CUDA, and its driver runs end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # `tests.perf.*` as `python -m tests.perf.gpu_check` imports it

from tests.perf.gpu_check import quickstart_overrides, settings_for  # noqa: E402


def _driver(*args: str, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KDTOOL_QUIET": "1"}
    return subprocess.run(["bash", str(ROOT / "tests/perf/gpu_check.sh"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_the_script_parses():
    assert subprocess.run(["bash", "-n", str(ROOT / "tests/perf/gpu_check.sh")]).returncode == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_stops_with_one_line_and_exit_2(tmp_path):
    done = _driver(str(tmp_path / "out"), timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "sees no CUDA device" in lines[0] and "--cpu-smoke" in lines[0]
    assert not (tmp_path / "out" / "gpu_check.json").exists()


def test_its_recipe_overrides_force_cuda_amp_and_tensorrt_ready_int8():
    from recipes.load import load_recipe

    recipe, _, _ = load_recipe(None, quickstart_overrides("fp16", settings_for(cpu_smoke=False)))
    trains = (recipe.teacher.train, recipe.student.train, recipe.distill.train)
    assert {(t.device, t.amp) for t in trains} == {("cuda", "fp16")}
    assert recipe.quantize.modes == ["static"] and recipe.quantize.backends == {"static": ["onnx"]}
    assert recipe.quantize.onnx_activations == "int8"
    assert recipe.export.formats == ["onnx", "tensorrt"]
    smoke, _, _ = load_recipe(None, quickstart_overrides("bf16", settings_for(cpu_smoke=True)))
    assert smoke.student.train.device == "cpu" and smoke.student.train.amp == "bf16" and smoke.data.limit == 160


@pytest.mark.slow
def test_cpu_smoke_runs_every_part_and_writes_the_summary(tmp_path):
    """The same driver on the CPU, tiny settings: every part ok or skipped with its reason, real numbers."""
    done = _driver(str(tmp_path), "--cpu-smoke", timeout=1600)
    parts = json.loads((tmp_path / "gpu_check.json").read_text())["parts"]
    assert done.returncode == 0, {name: p.get("reason") for name, p in parts.items() if p["status"] == "failed"}
    assert {name: p["status"] for name, p in parts.items()} == {
        "environment": "ok", "gpu_tests": "skipped", "quickstart_fp16": "ok", "quickstart_bf16": "ok", "ddp": "ok",
        "tensorrt": "skipped", "onnxruntime_gpu": "ok", "cuda_latency": "ok"}
    training = parts["quickstart_fp16"]["training"]
    assert all(training[s]["grad_scaler_scale"] > 0 for s in ("teacher", "student_baseline", "student_kd"))
    assert all(parts["quickstart_bf16"]["training"][s]["grad_scaler_scale"] is None for s in training)
    rows = {r["name"]: r for r in parts["quickstart_fp16"]["card"]}
    engine = rows["student_kd.tensorrt.fp16"]
    assert engine["status"] == "skipped" and "NVIDIA GPU" in engine["reason"]
    assert rows["student_kd.onnx.int8"]["status"] == "ok"
    ddp = parts["ddp"]
    assert ddp["world"] == 2 and ddp["backend"] == "gloo" and ddp["max_rel_loss_diff"] < 1e-5
    assert parts["tensorrt"]["qdq_onnx"]["tensorrt_int8_problem"] is None
    assert parts["tensorrt"]["qdq_onnx"]["quantize_nodes"] > 0 and "NVIDIA GPU" in parts["tensorrt"]["reason"]
    latency = parts["cuda_latency"]["student_kd.float32"]["batch1"]
    assert 0 < latency["min"] <= latency["p50"] <= latency["p90"]
