"""Teacher reuse (issue 19.3): a given `teacher.checkpoint` wins over a leftover `train` section, another
run's `teacher/best.safetensors` is a valid checkpoint, and the card says where the teacher came from."""

from __future__ import annotations

import json

import pytest
from cli_fixtures import cli, write_recipe
from safetensors.torch import load_file

pytestmark = pytest.mark.usefixtures("one_thread")


def test_another_runs_teacher_is_reused_not_retrained(tmp_path):
    first = write_recipe(tmp_path, {"name": "first", "teacher": {"train": {"epochs": 1, "lr": 0.01}}}, "first.yaml")
    assert cli("distill", first, "--out", tmp_path / "runs", "--stage", "baseline").exit_code == 0
    trained = tmp_path / "runs" / "first" / "teacher" / "best.safetensors"
    assert json.loads((trained.parent / "metrics.json").read_text())["history"]  # it was trained there
    # the second recipe names that teacher and still has a train section: the checkpoint wins
    second = write_recipe(tmp_path, {"name": "second", "teacher": {"checkpoint": str(trained),
                                                                   "train": {"epochs": 3, "lr": 0.01}}}, "second.yaml")
    result = cli("distill", second, "--out", tmp_path / "runs", "--stage", "baseline")
    assert result.exit_code == 0, result.stderr
    teacher = tmp_path / "runs" / "second" / "teacher"
    assert json.loads((teacher / "metrics.json").read_text())["history"] == []  # no epoch ran
    reused, original = load_file(str(teacher / "best.safetensors")), load_file(str(trained))
    assert reused.keys() == original.keys() and all((reused[k] == original[k]).all() for k in original)
    meta = json.loads((teacher / "meta.json").read_text())
    assert meta["origin"] == f"checkpoint {trained} (not trained here)"
    assert "teacher.train is not used" in result.stdout + result.stderr
    assert json.loads((trained.parent / "meta.json").read_text())["origin"] == "trained here (1 epoch)"


def test_the_card_names_the_teachers_origin(tmp_path):
    from benchmark.stage import teacher_notes
    from compress.context import Context
    from compress.core.runfolder import RunFolder
    from recipes.load import load_recipe

    r, _, _ = load_recipe(str(write_recipe(tmp_path)), None)
    ctx = Context(r, RunFolder.for_recipe(tmp_path / "runs", r.name))
    assert teacher_notes(ctx) == []  # no teacher stage yet: no claim
    (ctx.run.stage("teacher")).mkdir(parents=True)
    (ctx.run.stage("teacher", "meta.json")).write_text(json.dumps({"origin": "checkpoint t.pth (not trained here)"}))
    assert teacher_notes(ctx) == ["teacher: checkpoint t.pth (not trained here)."]
