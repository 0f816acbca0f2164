"""The accuracy-aware INT8 facts (float layers, int8 compute share, retention before/after) on the card."""

from __future__ import annotations

from benchmark.measure import floor_summary
from benchmark.report.card import ReportRow, accuracy_aware_notes, build_report
from export.run import floor_metadata

REPORT = {"min_retention": 0.99, "status": "met", "float_modules": ["stem.conv", "head.fc"],
          "int8_compute_share": 0.8731, "retention_before": 0.9612, "retention_after": 0.9934,
          "sensitivity": [{"module": "stem.conv", "error_alone": 0.2}]}


def rows(facts):
    return [ReportRow(name="teacher", stage="teacher", metrics={"accuracy": 0.98}),
            ReportRow(name="student_kd", stage="student_kd", metrics={"accuracy": 0.97}),
            ReportRow(name="student_kd.executorch.int8", stage="export", format="executorch", precision="int8",
                      runtime="executorch", metrics={"accuracy": 0.965}, accuracy_aware=facts)]


def test_card_row_carries_the_floor_facts_and_a_note():
    facts = floor_summary(REPORT)
    assert "sensitivity" not in facts and facts["float_modules"] == ["stem.conv", "head.fc"]
    report = build_report("r", rows(facts), "accuracy", ["android"], 0.9, threads=2)
    row = report.row("student_kd.executorch.int8")
    assert row.accuracy_aware["retention_after"] == 0.9934
    assert ReportRow.model_validate(row.model_dump(mode="json")).accuracy_aware == facts
    note = [n for n in report.notes if n.startswith("student_kd.executorch.int8: int8 retention floor")]
    assert note == ["student_kd.executorch.int8: int8 retention floor 0.99 met; kept in float: stem.conv, "
                    "head.fc (int8 share of conv/linear compute 87%); retention vs fp32 0.9612 -> 0.9934"]


def test_note_gives_the_decision_agreement_when_the_report_has_it():
    facts = floor_summary({**REPORT, "agreement_before": 0.875, "agreement_after": 0.9583})
    note = accuracy_aware_notes(rows(facts))[0]
    assert note.endswith("retention vs fp32 0.9612 -> 0.9934, decision agreement 0.875 -> 0.958"), note


def test_no_note_when_nothing_was_kept_in_float():
    facts = floor_summary({**REPORT, "float_modules": [], "retention_before": 0.995, "retention_after": 0.995})
    assert accuracy_aware_notes(rows(facts)) == []
    assert accuracy_aware_notes(rows(None)) == []
    missed = floor_summary({**REPORT, "float_modules": [], "status": "not met: a, b cost the most"})
    assert "not met: a, b cost the most; kept in float: none" in accuracy_aware_notes(rows(missed))[0]


def test_artifact_metadata_is_flat_strings():
    meta = floor_metadata(REPORT)
    assert meta == {"kdtool.float_layers": "stem.conv,head.fc", "kdtool.int8_compute_share": "0.8731",
                    "kdtool.retention_before": "0.9612", "kdtool.retention_after": "0.9934"}
    assert floor_metadata({"float_modules": [], "retention_before": None})["kdtool.retention_before"] == ""
