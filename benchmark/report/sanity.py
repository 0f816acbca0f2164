"""Sanity checks written on the report card: numbers that are right but mean less than they seem.

- a teacher at or below chance (a wrong checkpoint or a label order different from the checkpoint's);
- a model whose primary metric equals a constant predictor's (it learned nothing measurable);
- a student as large as, or slower than, its teacher;
- the validation metric that also chose the best checkpoint (no separate test split).

Rows are `benchmark.report.card.ReportRow`s (typed `Any` here: card imports this module).
"""

from __future__ import annotations

import math
from typing import Any

from compress.core.progress import count_text

EQUAL = 1e-6
"""Two metric values this close are the same score."""

MODELS = ("teacher", "student_baseline", "student_kd")


def _pytorch_rows(rows: list[Any]) -> dict[str, Any]:
    return {r.name: r for r in rows if r.name in MODELS and r.format == "pytorch" and r.status == "ok"}


def chance_notes(rows: list[Any], metric: str, chance: float | None) -> list[str]:
    """Notes for the teacher at or below chance and for every model scoring like a constant predictor."""
    if chance is None:
        return []
    notes = []
    for name, row in _pytorch_rows(rows).items():
        value = row.metrics.get(metric)
        if value is None:
            continue
        if abs(value - chance) <= EQUAL:
            notes.append(f"{name}: {metric} {value:.4f} equals that of a constant predictor (always the same "
                         "answer) on the validation split: it has learned nothing this metric can see.")
        elif name == "teacher" and value < chance:
            notes.append(f"teacher: {metric} {value:.4f} is below chance ({chance:.4f}): most likely a wrong "
                         "checkpoint or task.labels in another order than the checkpoint's; retention is not "
                         "computed against it.")
    return notes


def size_notes(rows: list[Any]) -> list[str]:
    """A note when the distilled student is not smaller (params, GFLOPs) or not faster (p50) than the teacher."""
    models = _pytorch_rows(rows)
    teacher, student = models.get("teacher"), models.get("student_kd")
    if teacher is None or student is None:
        return []
    worse = []
    for what, t, s, text in (("params", teacher.params, student.params, count_text),
                             ("GFLOPs", teacher.gflops, student.gflops, lambda v: f"{v:.4g}")):
        if t is not None and s is not None and s >= 0.9 * t:
            worse.append(f"{what} {text(s)} vs teacher {text(t)}")
    t_lat, s_lat = teacher.latency_at(1), student.latency_at(1)
    if t_lat is not None and s_lat is not None and s_lat.p50 >= t_lat.p50:
        worse.append(f"p50 {s_lat.p50:.2f} ms vs teacher {t_lat.p50:.2f} ms")
    if not worse:
        return []
    return [f"student_kd is not smaller or faster than its teacher ({'; '.join(worse)}): pick a smaller "
            "student architecture, or distillation buys nothing here."]


def selection_note(metric: str, split: str = "validation") -> str:
    """The card's reminder that the metric shown also picked the best checkpoint."""
    return (f"No separate test split: the {split} {metric} also chose each model's best checkpoint, so it is "
            "optimistic; hold out a test split for an unbiased number.")


def null_notes(rows: list[Any]) -> list[str]:
    """Why each null metric or retention on the card is null (one note per reason, naming its rows)."""
    by_reason: dict[str, list[str]] = {}
    for r in rows:
        if r.status != "ok":
            continue
        for metric, why in r.metric_notes.items():
            by_reason.setdefault(f"{metric}: {why}", []).append(r.name)
        if r.retention is None and r.retention_reason:
            by_reason.setdefault(f"retention not computed: {r.retention_reason}", []).append(r.name)
    return [f"{reason} ({', '.join(names)})." for reason, names in by_reason.items()]


def finite_or_null(data: Any) -> Any:
    """A row's raw fields with every NaN/Inf metric or retention made null, the reason recorded."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    metrics, notes = dict(data.get("metrics") or {}), dict(data.get("metric_notes") or {})
    for k, v in metrics.items():
        if v is not None and not math.isfinite(float(v)):
            metrics[k] = None
            notes.setdefault(k, f"not finite ({v})")
    data["metrics"], data["metric_notes"] = metrics, notes
    for key in ("retention", "retention_vs_student"):
        v = data.get(key)
        if v is not None and not math.isfinite(float(v)):
            data[key] = None
            data.setdefault("retention_reason", f"{key} not finite ({v})")
    return data
