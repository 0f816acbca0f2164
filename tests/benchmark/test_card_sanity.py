"""The card tells the truth: no NaN, retention only against a teacher above chance, sanity notes, busy machine."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from benchmark.environment import load_warnings
from benchmark.latency import measure
from benchmark.report.card import LatencyMs, ReportRow, build_report, render_markdown
from benchmark.report.render import write_report


def _lat(p50: float, spread: float | None = None, other_cpu: float | None = None) -> LatencyMs:
    return LatencyMs(p50=p50, p90=p50, p99=p50, mean=p50, std=0.0, batch=1, threads=2, spread=spread,
                     other_cpu=other_cpu)


def _rows(metric: str, teacher: float, student: float, **student_kw) -> list[ReportRow]:
    return [ReportRow(name="teacher", stage="teacher", params=1_000_000, gflops=1.0, latency_ms=_lat(9.0),
                      metrics={metric: teacher}),
            ReportRow(name="student_kd", stage="student_kd", params=100_000, gflops=0.1, latency_ms=_lat(1.0),
                      metrics={metric: student}, **student_kw),
            ReportRow(name="student_kd.onnx.fp32", stage="export", format="onnx", runtime="onnxruntime",
                      source="student_kd", latency_ms=_lat(0.5), metrics={metric: student})]


def _report(rows, metric, chance=None, **kw):
    return build_report("t", rows, metric, ["server"], 0.9, 2, chance=chance, **kw)


def test_nan_metric_is_written_as_null_with_reason(tmp_path):
    report = _report(_rows("ccc", 0.5, float("nan")), "ccc")
    paths = write_report(report, tmp_path)
    text = open(paths["json"]).read()
    assert "NaN" not in text  # was: "ccc": NaN, retention NaN
    row = json.loads(text)["rows"][1]
    assert row["metrics"]["ccc"] is None and "not finite" in row["metric_notes"]["ccc"]
    assert row["retention"] is None and row["retention_reason"]


@pytest.mark.parametrize("metric,teacher,student,chance", [
    ("auc", 0.075, 0.785, None),  # printed "1040.0 % retention" and recommended it
    ("ccc", -0.37, 0.055, None),  # printed -15 %
    ("ccc", -0.1, -0.3, None),  # printed 300 %
    ("f1", 0.667, 0.667, 0.667),  # the wake-word "always keyword" teacher: printed 100 %
])
def test_retention_is_null_against_a_teacher_at_or_below_chance(metric, teacher, student, chance):
    report = _report(_rows(metric, teacher, student), metric, chance)
    kd = report.row("student_kd")
    assert kd.retention is None and "chance" in kd.retention_reason
    assert report.recommendation == {}  # nothing recommended on a meaningless retention
    assert "1040" not in render_markdown(report)


def test_constant_predictor_and_teacher_below_chance_are_noted():
    notes = _report(_rows("f1", 0.667, 0.667), "f1", chance=0.667).notes
    assert any(n.startswith("teacher: f1 0.6670 equals that of a constant predictor") for n in notes)
    assert any(n.startswith("student_kd: f1 0.6670 equals") for n in notes)
    below = _report(_rows("auc", 0.075, 0.785), "auc", chance=0.5).notes
    assert any("below chance" in n and "task.labels" in n for n in below)


def test_student_as_large_as_its_teacher_is_noted():
    rows = _rows("accuracy", 0.9, 0.85)
    rows[1] = rows[1].model_copy(update={"params": 17_400_000, "gflops": 14.3, "latency_ms": _lat(12.0)})
    rows[0] = rows[0].model_copy(update={"params": 17_500_000, "gflops": 8.8})
    notes = _report(rows, "accuracy", chance=0.1).notes
    assert any(n.startswith("student_kd is not smaller or faster than its teacher")
               and "GFLOPs 14.3 vs teacher 8.8" in n for n in notes)
    assert not any("not smaller" in n for n in _report(_rows("accuracy", 0.9, 0.85), "accuracy").notes)


def test_card_says_the_validation_metric_chose_the_checkpoint():
    notes = _report(_rows("accuracy", 0.9, 0.85), "accuracy").notes
    assert any("validation accuracy also chose each model's best checkpoint" in n for n in notes)
    assert not any("chose" in n for n in _report(_rows("accuracy", 0.9, 0.85), "accuracy",
                                                 selection_split=None).notes)


def test_busy_machine_and_high_spread_warn_on_card_and_json():
    rows = _rows("accuracy", 0.9, 0.85)
    rows[2] = rows[2].model_copy(update={"latency_ms": _lat(0.5, spread=0.4, other_cpu=1.8)})
    warnings = load_warnings(rows, threads=2, cores=2)
    assert any(w.startswith("Machine busy while timing") and "student_kd.onnx.fp32 (1.8)" in w for w in warnings)
    assert any(w.startswith("Unstable latency") and "student_kd.onnx.fp32 (40%)" in w for w in warnings)
    report = _report(rows, "accuracy")
    assert report.machine["busy"] is True and "load_average" in report.machine
    assert any(n.startswith("Machine busy") for n in report.notes)
    assert load_warnings(_rows("accuracy", 0.9, 0.85), threads=2, cores=2) == []


def test_latency_records_other_processes_cpu_and_spread():
    pytest.importorskip("resource")
    if not open("/proc/stat").readline().startswith("cpu "):
        pytest.skip("needs Linux /proc/stat")
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        stats = measure(lambda x: x.sum(), [np.ones((1, 8), dtype=np.float32)], warmup=1, min_runs=10,
                        min_time_s=0.5, threads=1)
    finally:
        spin.kill()
        spin.wait()
    assert stats.other_cpu is not None and stats.other_cpu >= 0.5  # the spinning process held about a core
    # MAD <= max |t - median| <= max - min: a spread from the wrong quantities (std / mean of a loaded run) breaks it
    assert stats.spread is not None and stats.spread <= 1.4826 * (stats.max - stats.min) / stats.p50


def test_every_null_on_the_card_has_its_reason_in_the_notes():
    rows = _rows("auc", 0.075, 0.785)
    rows[1] = rows[1].model_copy(update={"metrics": {"auc": None}, "metric_notes": {"auc": "undefined: x"}})
    report = _report(rows, "auc")
    md = render_markdown(report)
    assert "auc: undefined: x (student_kd)." in md
    assert "retention not computed: reference auc 0.075 is at or below chance" in md


def test_executorch_coreml_program_is_not_verified_on_linux_not_failed(tmp_path):
    pytest.importorskip("executorch.runtime")

    from benchmark.measure import artifact_row
    from export.artifact import Artifact
    from export.formats.executorch.runtime import backend_registered

    if backend_registered("CoreMLBackend"):
        pytest.skip("this ExecuTorch runtime has the CoreML delegate (Apple OS)")
    pte = tmp_path / "student_kd.pte"
    pte.write_bytes(b"a program lowered to CoreMLBackend")
    artifact = Artifact(name="student_kd.executorch-coreml.fp32", format="executorch", precision="fp32", path=pte,
                        runtime="executorch", info={"backend": "CoreMLBackend"})
    row = artifact_row(artifact, [], None, None, {}, None, tmp_path)
    assert row.status == "skipped"  # was: failed, "ExecuTorch cannot load"
    assert row.reason.startswith("not verified on this OS: the ExecuTorch CoreML delegate runs only on Apple OSes")
