"""Kill -9 anywhere, run the same command again: it continues, and nothing is lost (issue 34).

Each stage command (distill, quantize, export, benchmark) of a tiny run is SIGKILLed in a child
process at an atomic rename (`KDTOOL_FAULT`, see `compress.core.faults`), then run again without
--force or --resume. The rerun must exit 0 and leave the folder a clean run leaves: the same files,
parity passed, the same metrics (training resumes exactly on one thread), every file loadable.
The fast suite tries one kill point per stage; `-m slow` tries every rename of every stage.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from crash_harness import STAGES, differences, kill_and_rerun, unloadable

pytestmark = pytest.mark.usefixtures("one_thread")

FAST_POINTS = {
    "distill": ("after", 7),    # the baseline's first training state is in place, its readable copy is not
    "quantize": ("before", 2),  # the fp32 ONNX is written, not yet in place; no int8 model yet
    "export": ("after", 2),     # an artifact folder is in place, the export index is not written
    "benchmark": ("before", 2),  # report.html is written, report.md and report.json are not
}


@pytest.fixture
def reference(crash_reference):
    return crash_reference


def check(reference, stage: str, outcome) -> None:
    assert outcome.exit_code == 0, outcome.stderr[-2000:]
    assert "--force" not in outcome.stderr and "--resume" not in outcome.stderr, outcome.stderr
    assert not differences(outcome.run, reference.after[stage] / "tiny")
    assert not unloadable(outcome.run)


@pytest.mark.parametrize("stage", STAGES)
def test_a_kill_mid_stage_then_the_same_command_completes(reference, stage, tmp_path):
    when, n = FAST_POINTS[stage]
    outcome = kill_and_rerun(reference, stage, when, n, tmp_path / "work")
    assert outcome.killed, f"{stage} made fewer than {n} renames: pick another kill point"
    check(reference, stage, outcome)


def test_the_export_refusal_of_issue_34_is_gone(reference, tmp_path):
    """The case the issue reports: artifacts in place, the export index never written (killed)."""
    outcome = kill_and_rerun(reference, "export", "after", 5, tmp_path / "work")  # 2 of 3 artifacts in place
    assert outcome.killed
    assert "different recipe" not in outcome.stderr
    check(reference, "export", outcome)


def test_the_reference_is_complete(reference):
    """The harness compares against something: every stage left its outputs, and every file loads."""
    run = reference.after["benchmark"] / "tiny"
    for rel in ("student_kd/best.safetensors", "quantized/dynamic/onnx/model.int8.onnx",
                "export/server/onnx/int8/manifest.json", "report/report.json"):
        assert (run / rel).is_file(), rel
    assert not unloadable(run)


@pytest.mark.slow
def test_every_kill_point_of_every_stage(reference, tmp_path):
    """Every rename of every stage, before and after it ($KDTOOL_CRASH_STAGES: a comma-separated subset).
    Writes the outcomes to $KDTOOL_CRASH_TABLE when set (stage, point, file, rerun exit code,
    differences, unloadable files)."""
    rows, failures = [], []
    stages = os.environ.get("KDTOOL_CRASH_STAGES", ",".join(STAGES)).split(",")
    table = os.environ.get("KDTOOL_CRASH_TABLE")
    for stage in stages:
        for when in ("before", "after"):
            n = 1
            while True:
                outcome = kill_and_rerun(reference, stage, when, n, tmp_path / f"{stage}-{when}-{n}")
                if not outcome.killed:  # past the stage's last rename
                    break
                diff = differences(outcome.run, reference.after[stage] / "tiny") if outcome.exit_code == 0 else []
                bad = unloadable(outcome.run)
                rows.append([stage, f"{when}-rename:{n}", outcome.file, outcome.exit_code, "; ".join(diff),
                             "; ".join(bad)])
                if outcome.exit_code or diff or bad:
                    failures.append(rows[-1] + [outcome.stderr[-300:]])
                if table:  # written as it goes: a long run cut short still leaves its rows
                    with Path(table).open("w", newline="") as f:
                        csv.writer(f).writerows([["stage", "kill point", "file", "rerun exit", "differences",
                                                  "unloadable"], *rows])
                n += 1
    assert rows, "no kill point landed"
    assert not failures, failures
