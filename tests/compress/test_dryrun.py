"""An honest dry run (issue 19.4): it checks every path the run reads (checkpoints, data roots, label
folders, manifests) and fails naming all that are missing; it warns on what is known to be wrong."""

from __future__ import annotations

import pytest
from cli_fixtures import cli, error_lines, write_recipe

from compress.core.tasks import Task
from compress.data.synthetic import write_csv_manifest, write_imagefolder
from recipes.schema import TaskConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _dry(recipe, tmp_path, *sets: str):
    args = ["run", recipe, "--out", tmp_path / "runs", "--dry-run"]
    for s in sets:
        args += ["--set", s]
    return cli(*args)


def test_a_missing_teacher_checkpoint_fails_the_dry_run(tmp_path):
    recipe = write_recipe(tmp_path, {"teacher": {"checkpoint": str(tmp_path / "nope.pth"), "train": None}})
    result = _dry(recipe, tmp_path)
    assert result.exit_code == 2
    assert f"teacher.checkpoint {tmp_path / 'nope.pth'} does not exist" in error_lines(result.stderr)[0]
    assert "dry run ok" not in result.stdout + result.stderr


def test_every_missing_data_path_and_label_folder_is_named_at_once(tmp_path):
    task = Task.from_config(TaskConfig(kind="binary", num_classes=2, labels=["real", "fake"]))
    write_imagefolder(tmp_path / "train", task, num_samples=8, image_size=16)
    (tmp_path / "train" / "fake").rename(tmp_path / "train" / "faek")  # a mistyped label folder
    recipe = write_recipe(tmp_path, {"task": {"kind": "binary", "num_classes": 2, "labels": ["real", "fake"]},
                                     "data": {"source": "imagefolder", "root": str(tmp_path / "train"),
                                              "val_root": str(tmp_path / "val"), "limit": None},
                                     "student": {"checkpoint": str(tmp_path / "s.pth")}})
    line = error_lines(_dry(recipe, tmp_path).stderr)[0]
    assert "dry run: 3 problem(s)" in line
    assert f"student.checkpoint {tmp_path / 's.pth'} does not exist" in line
    assert "faek" in line and f"data.val_root {tmp_path / 'val'} does not exist" in line


def test_a_manifest_with_missing_files_is_named(tmp_path):
    task = Task.from_config(TaskConfig(kind="regression", num_classes=2, outputs=["valence", "arousal"]))
    csv = write_csv_manifest(tmp_path / "data" / "train.csv", task, num_samples=6, image_size=16)
    missing = sorted((tmp_path / "data").rglob("*.png"))[0]
    missing.unlink()
    recipe = write_recipe(tmp_path, {"task": {"kind": "regression", "num_classes": 2,
                                              "outputs": ["valence", "arousal"]},
                                     "data": {"source": "csv", "root": str(csv), "limit": None}})
    line = error_lines(_dry(recipe, tmp_path).stderr)[0]
    assert f"data.root {csv}: 1 of 6 listed files do not exist (first: {missing})" in line


def test_a_student_no_smaller_than_its_teacher_is_warned(tmp_path):
    recipe = write_recipe(tmp_path, {"teacher": {"arch": "test_efficientnet"}, "student": {"arch": "test_resnet"}})
    result = _dry(recipe, tmp_path)
    assert result.exit_code == 0, result.stderr
    out = " ".join((result.stdout + result.stderr).split())
    assert "warning: the student (test_resnet" in out and "is no smaller than its teacher (test_efficientnet" in out
    assert "dry run ok" in out and "(1 warning(s) above)" in out
    clean = _dry(write_recipe(tmp_path, name="clean.yaml"), tmp_path)
    assert clean.exit_code == 0 and "warning" not in clean.stdout + clean.stderr
