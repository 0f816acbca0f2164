"""CI gates: latency/metric regressions against a baseline and the retention floor (exit code 5)."""

from __future__ import annotations

import pytest

from benchmark.gates import check_gates, enforce_gates
from benchmark.report.card import LatencyMs, Report, ReportRow, with_retention
from compress.core.errors import EXIT_GATE, GateError


def _row(name: str, stage: str, p50: float, accuracy: float, **kw) -> ReportRow:
    lat = LatencyMs(p50=p50, p90=p50, p99=p50, mean=p50, std=0.0, batch=1, threads=2)
    return ReportRow(name=name, stage=stage, latency_ms=lat, metrics={"accuracy": accuracy}, **kw)


def _report(
    kd_p50: float = 1.0,
    kd_acc: float = 0.97,
    int8_acc: float = 0.965,
    baseline_acc: float = 0.80,
    cpu: str = "Xeon",
) -> Report:
    rows = [
        _row("teacher", "teacher", 9.0, 0.98),
        _row("student_baseline", "student_baseline", 1.0, baseline_acc),
        _row("student_kd", "student_kd", 3.0, kd_acc),
        _row("student_kd.onnx.fp32", "export", kd_p50, kd_acc, format="onnx", runtime="onnxruntime"),
        _row(
            "student_kd.executorch.int8",
            "export",
            0.5,
            int8_acc,
            format="executorch",
            precision="int8",
            runtime="executorch",
        ),
    ]
    return Report(
        recipe={"name": "quickstart"},
        primary_metric="accuracy",
        machine={"cpu": cpu, "threads": 2},
        rows=with_retention(rows, "accuracy"),
    )


def test_passing_report_passes():
    assert check_gates(_report(kd_p50=1.03), _report(), max_regression=0.05, min_retention=0.97) == []
    enforce_gates(_report(kd_p50=1.03), _report(), max_regression=0.05, min_retention=0.97)  # no raise


def test_slower_row_fails_with_exit_code_5():
    with pytest.raises(GateError) as err:
        enforce_gates(_report(kd_p50=1.2), _report(), max_regression=0.05)
    assert err.value.exit_code == EXIT_GATE == 5
    assert "student_kd.onnx.fp32: p50 1.200 ms vs baseline 1.000 ms (+20.0% > 5.0%)" in err.value.message
    assert "executorch" not in err.value.message


def test_metric_regression_and_other_cpu_note():
    violations = check_gates(_report(kd_acc=0.90, cpu="EPYC"), _report(), max_regression=0.05)
    assert "student_kd: accuracy 0.9000 vs baseline 0.9700 (worse by more than 5.0%)" in violations
    assert len(violations) == 2  # student_kd and its ONNX export; latency unchanged
    slower = check_gates(_report(kd_p50=2.0, cpu="EPYC"), _report(), max_regression=0.05)
    assert slower and slower[0].endswith("(baseline measured on another CPU: Xeon)")


def test_retention_floor_applies_to_deliverables_only():
    violations = check_gates(_report(int8_acc=0.94), min_retention=0.97)
    # 0.94 / 0.98 = 95.9%; the student baseline (81.6%) is a reference, not gated
    assert violations == ["student_kd.executorch.int8: retention 95.9% < floor 97.0%"]


def test_failed_row_that_was_ok_is_a_violation():
    now = _report()
    now.rows[3] = now.rows[3].model_copy(update={"status": "failed", "reason": "parity max_abs 0.4"})
    violations = check_gates(now, _report(), max_regression=0.05)
    assert violations == ["student_kd.onnx.fp32: failed (parity max_abs 0.4), ok in the baseline"]


def test_no_bounds_no_violations():
    assert check_gates(_report(kd_p50=10.0, int8_acc=0.1), _report()) == []


def test_null_or_nan_retention_of_a_gated_row_fails_with_the_reason():
    now = _report()
    now.rows[4] = now.rows[4].model_copy(update={"retention": None, "retention_reason": "reference auc 0.075 "
                                                  "is at or below chance (0.5): retention is meaningless"})
    violations = check_gates(now, min_retention=0.97)
    assert violations == ["student_kd.executorch.int8: retention is null (reference auc 0.075 is at or below "
                          "chance (0.5): retention is meaningless), floor 97.0%"]  # was: passed
    nan = ReportRow(name="student_kd.onnx.int8", stage="export", metrics={"accuracy": float("nan")})
    report = Report(recipe={"name": "q"}, primary_metric="accuracy", rows=with_retention(
        [*_report().rows[:3], nan], "accuracy"))
    with pytest.raises(GateError) as err:
        enforce_gates(report, min_retention=0.97)
    assert err.value.exit_code == 5 and "student_kd.onnx.int8: retention is null" in err.value.message


def test_null_metric_that_the_baseline_had_is_a_regression():
    now = _report()
    now.rows[3] = now.rows[3].model_copy(update={"metrics": {"accuracy": float("nan")}})
    violations = check_gates(now, _report(), max_regression=0.05)
    assert violations == ["student_kd.onnx.fp32: accuracy is null (not finite (nan)); the baseline had 0.9700"]


def _ccc_report(kd_ccc: float) -> Report:
    rows = [_row("teacher", "teacher", 9.0, 0.0), _row("student_kd", "student_kd", 3.0, 0.0)]
    rows = [r.model_copy(update={"metrics": {"ccc": v}}) for r, v in zip(rows, (0.5, kd_ccc), strict=True)]
    return Report(recipe={"name": "emotion"}, primary_metric="ccc", machine={"cpu": "Xeon"}, rows=rows)


def test_regression_respects_the_sign_of_the_metric():
    # a CCC that rose from -0.20 to -0.195 was flagged as worse
    assert check_gates(_ccc_report(-0.195), _ccc_report(-0.20), max_regression=0.05) == []
    worse = check_gates(_ccc_report(-0.25), _ccc_report(-0.20), max_regression=0.05)
    assert worse == ["student_kd: ccc -0.2500 vs baseline -0.2000 (worse by more than 5.0%)"]
