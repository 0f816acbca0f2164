"""CI gates on a report: latency and metric regressions against a baseline, and a retention floor.

`kdtool benchmark RECIPE --baseline old/report.json --max-regression 0.05 --min-retention 0.97`
calls `enforce_gates`; a violation raises `GateError` (exit code 5) listing the offending rows.

Rules:
- regression (`max_regression`, a fraction): for every ok row with the same name in the baseline,
  p50 at batch 1 may not rise by more than the fraction, and the primary metric may not worsen
  by more than the fraction of the baseline's magnitude, in the metric's direction (`|ref|`, so a
  CCC going from -0.20 to -0.195 is better, not worse); a row ok in the baseline and failed now,
  or whose metric was measured in the baseline and is null/NaN now, is a violation.
- retention floor (`min_retention`): every ok deliverable row (not the teacher, not the student
  trained without KD or artifacts made from it: those are references) must have a retention of at
  least the floor; a null or NaN retention fails, with the reason the card gives.
"""

from __future__ import annotations

import math
from pathlib import Path

from benchmark.report.card import Report, ReportRow, higher_is_better, load_report
from compress.core.errors import GateError, KdtoolError

REFERENCE_ORIGINS = ("teacher", "student_baseline")


def _deliverable(row: ReportRow) -> bool:
    return row.stage not in REFERENCE_ORIGINS and row.origin not in REFERENCE_ORIGINS


def _regressions(report: Report, baseline: Report, bound: float) -> list[str]:
    out = []
    metric = report.primary_metric or baseline.primary_metric
    other_cpu = baseline.machine.get("cpu") != report.machine.get("cpu")
    where = f" (baseline measured on another CPU: {baseline.machine.get('cpu')})" if other_cpu else ""
    for row in report.rows:
        old = baseline.row(row.name)
        if old is None or old.status != "ok":
            continue
        if row.status != "ok":
            out.append(f"{row.name}: {row.status} ({row.reason or 'no reason given'}), ok in the baseline")
            continue
        new_lat, old_lat = row.latency_at(1), old.latency_at(1)
        comparable = new_lat and old_lat and new_lat.threads == old_lat.threads
        if comparable and new_lat.p50 > old_lat.p50 * (1 + bound):
            out.append(f"{row.name}: p50 {new_lat.p50:.3f} ms vs baseline {old_lat.p50:.3f} ms "
                       f"(+{new_lat.p50 / old_lat.p50 - 1:.1%} > {bound:.1%}){where}")
        problem = _metric_regression(metric, row, old, bound) if metric else None
        if problem:
            out.append(f"{row.name}: {problem}")
    return out


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _metric_regression(metric: str, row: ReportRow, old: ReportRow, bound: float) -> str | None:
    """Why `row`'s metric regressed against `old`'s, or None: direction-aware, relative to |baseline|."""
    ref, new = old.metrics.get(metric), row.metrics.get(metric)
    if not _finite(ref):
        return None
    if not _finite(new):
        why = row.metric_notes.get(metric, "not measured" if new is None else f"not finite ({new})")
        return f"{metric} is null ({why}); the baseline had {ref:.4f}"
    loss = (ref - new) if higher_is_better(metric) else (new - ref)
    if loss > bound * abs(ref):
        return f"{metric} {new:.4f} vs baseline {ref:.4f} (worse by more than {bound:.1%})"
    return None


def check_gates(report: Report, baseline: Report | None = None, max_regression: float | None = None,
                min_retention: float | None = None) -> list[str]:
    """Every gate violation of `report`, one line per offending row and rule (empty when all pass).

    Args:
        report: the report under test.
        baseline: an earlier report to compare same-named rows with (needs `max_regression`).
        max_regression: allowed relative worsening of p50 latency and of the primary metric.
        min_retention: floor on the retention of deliverable rows.
    """
    violations: list[str] = []
    if baseline is not None and max_regression is not None:
        violations += _regressions(report, baseline, max_regression)
    if min_retention is not None:
        for row in report.rows:
            if row.status != "ok" or not _deliverable(row):
                continue
            if not _finite(row.retention):
                violations.append(f"{row.name}: retention is null ({row.retention_reason or 'not measured'}), "
                                  f"floor {min_retention:.1%}")
            elif row.retention < min_retention:
                violations.append(f"{row.name}: retention {row.retention:.1%} < floor {min_retention:.1%}")
    return violations


def enforce_gates(report: Report, baseline: Report | None = None, max_regression: float | None = None,
                  min_retention: float | None = None) -> None:
    """Raise `GateError` (exit code 5) listing every violation of `check_gates`.

    Raises:
        GateError: at least one gate was not met.
    """
    violations = check_gates(report, baseline, max_regression, min_retention)
    if violations:
        raise GateError(f"{len(violations)} gate(s) not met:\n  " + "\n  ".join(violations),
                        "fix the regression, or loosen --max-regression / --min-retention on purpose")


def check_gate_args(baseline: Path | None, max_regression: float | None, min_retention: float | None) -> None:
    """Refuse a bad `--baseline` (missing, a folder, not JSON, another schema) or gate value by name.

    Called by the CLI before the recipe, the run folder or torch are touched (answers in < 1 s).

    Raises:
        KdtoolError: naming the argument and its value (exit 2).
    """
    if min_retention is not None and not 0 < min_retention <= 1.5:
        raise KdtoolError(f"--min-retention {min_retention}: not a fraction of the teacher's metric",
                          "e.g. 0.97 for 97 %")
    if max_regression is not None and max_regression < 0:
        raise KdtoolError(f"--max-regression {max_regression}: negative", "e.g. 0.05 for 5 % worse at most")
    if baseline is not None:
        if baseline.is_dir():
            raise KdtoolError(f"--baseline {baseline} is a folder", "pass the report.json file inside it")
        if not baseline.is_file():
            raise KdtoolError(f"--baseline {baseline} does not exist", "pass an earlier run's report/report.json")
        load_report(baseline)
