"""`kdtool run` with a prune section: distill → prune → quantize → export → benchmark, as a user runs it.

The pruned student is what every later stage takes: INT8 models, ONNX, ExecuTorch, LiteRT and
OpenVINO artifacts (fp32 and int8) all pass parity, and it has its own row on the card with the ratio reached.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

RECIPE = """# kdtool run pruned.yaml
name: pruned
task: {kind: multiclass, num_classes: 10}
data: {source: digits, image_size: 32, channels: 1, limit: 400, batch_size: 32}
teacher: {arch: resnet10t, kwargs: {channels: [16, 32, 64, 128]}, train: {epochs: 4, lr: 0.01}}
student: {arch: resnet10t, kwargs: {channels: [8, 16, 32, 64]}, train: {epochs: 3, lr: 0.01}}
distill: {temperature: 4, alpha: 0.3, train: {epochs: 3, lr: 0.01, init: scratch}}
prune: {ratio: 0.3, importance: taylor, steps: 2, recover: kd, train: {epochs: 1, lr: 0.003}}
quantize: {modes: [dynamic, static], calibration_samples: 64}
export: {targets: [android, server], parity_samples: 16}
benchmark: {min_runs: 5, min_time_s: 0.02, warmup: 1, min_retention: 0.3}
"""


@pytest.mark.slow  # ~5 min on 2 busy cores
def test_run_with_prune_section_ships_the_pruned_student(tmp_path):
    (tmp_path / "pruned.yaml").write_text(RECIPE)
    env = {**os.environ, "KDTOOL_QUIET": "1", "OMP_NUM_THREADS": "2"}
    result = subprocess.run([sys.executable, str(ROOT / "kdtool.py"), "run", "pruned.yaml", "--out", "runs"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "pruned"
    meta = json.loads((run / "student_pruned" / "meta.json").read_text())
    assert [p.name for p in sorted((run / "student_pruned").glob("step*"))] == ["step1", "step2"]
    assert meta["pruning"]["channels_removed"] == pytest.approx(0.3, abs=0.05)
    report = json.loads((run / "report" / "report.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    pruned, kd = rows["student_pruned"], rows["student_kd"]
    assert pruned["stage"] == "student_pruned" and pruned["pruning"]["recover"] == "kd"
    assert pruned["params"] < 0.7 * kd["params"] and pruned["gflops"] < 0.8 * kd["gflops"]
    assert pruned["retention"] is not None and pruned["latency_ms"]["p50"] > 0
    exported = [r for r in report["rows"] if r["stage"] == "export" and r["status"] == "ok"]
    formats = {(r["format"], r["precision"]) for r in exported}
    assert {("onnx", "fp32"), ("onnx", "int8"), ("executorch", "fp32"), ("executorch", "int8")} <= formats
    from export.extras import importable

    if importable("litert_torch"):
        assert {("litert", "fp32"), ("litert", "int8")} <= formats
    if importable("openvino"):  # at 32 px: at 16 px resnet10t's last pooling window is larger than its map
        assert {("openvino", "fp32"), ("openvino", "int8")} <= formats
    for r in exported:
        assert r["name"].startswith("student_pruned.") and r["params"] == pruned["params"]
        assert r["parity"]["status"] == "passed", r
    assert any(n.startswith("student_pruned: ") and "of channels" in n for n in report["notes"])
    for target, pick in report["recommendation"].items():
        assert pick is None or pick.startswith("student_pruned."), (target, pick)
