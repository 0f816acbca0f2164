"""Held-out scoring (issue 19.7): with `data.test_root` or `data.test_fraction` the card's metrics come
from the test split, the best checkpoint is still chosen on validation, and the card names the split."""

from __future__ import annotations

import json

import pytest
import torch
from cli_fixtures import cli, write_recipe

from compress.core.tasks import Task
from compress.data.loader import build_splits
from recipes.schema import DataConfig, TaskConfig

pytestmark = pytest.mark.usefixtures("one_thread")

DIGITS_TASK = Task.from_config(TaskConfig(kind="multiclass", num_classes=10))


def _indices(ds) -> set[int]:
    return {i for _, i in ds.picks}


def test_test_fraction_holds_out_part_of_training_and_keeps_validation():
    cfg = DataConfig(source="digits", image_size=8, channels=1, limit=200)
    train0, val0, none = build_splits(cfg, DIGITS_TASK)
    assert none is None
    train, val, test = build_splits(cfg.model_copy(update={"test_fraction": 0.25}), DIGITS_TASK)
    assert len(test) == 50 and len(train) == 150 and len(train) + len(test) == len(train0)
    assert not _indices(train) & _indices(test)  # disjoint
    assert torch.equal(val.raw, val0.raw)  # validation is unchanged
    assert set(test.targets.tolist()) == set(range(10))  # stratified: every class is tested


def test_test_root_is_read_like_val_root(tmp_path):
    from compress.data.synthetic import write_imagefolder

    task = Task.from_config(TaskConfig(kind="binary", num_classes=2, labels=["real", "fake"]))
    write_imagefolder(tmp_path / "train", task, num_samples=20, image_size=16, seed=1)
    write_imagefolder(tmp_path / "test", task, num_samples=12, image_size=16, seed=3)
    cfg = DataConfig(source="imagefolder", root=tmp_path / "train", image_size=16, test_root=tmp_path / "test")
    train, val, test = build_splits(cfg, task)
    assert len(test) == 12 and len(train) + len(val) == 20
    assert set(test.targets.tolist()) == {0, 1}


def test_test_root_needs_a_file_source():
    with pytest.raises(ValueError, match="data.test_root needs a file source"):
        DataConfig(source="digits", test_root="x")
    with pytest.raises(ValueError, match="not both"):
        DataConfig(source="csv", root="a.csv", test_root="b.csv", test_fraction=0.2)


def test_the_card_scores_the_test_split_and_says_so(tmp_path):
    from compress.context import Context
    from compress.core.runfolder import RunFolder
    from compress.distill.trainer import evaluate
    from recipes.load import load_recipe

    recipe = write_recipe(tmp_path, {"data": {"test_fraction": 0.25},
                                     "benchmark": {"min_runs": 2, "min_time_s": 0, "warmup": 0}})
    out = tmp_path / "runs"
    assert cli("distill", recipe, "--out", out).exit_code == 0
    result = cli("benchmark", recipe, "--out", out)
    assert result.exit_code == 0, result.stderr
    report = json.loads((out / "tiny" / "report" / "report.json").read_text())
    assert report["scored_split"] == "test"
    assert any(n.startswith("metrics: held-out test split (data.test_fraction 0.25, 30 samples)")
               for n in report["notes"])
    r, _, _ = load_recipe(str(recipe), None)
    ctx = Context(r, RunFolder.for_recipe(out, r.name))
    name, test = ctx.scored_split
    assert name == "test" and len(test) == 30
    for stage in ("teacher", "student_kd"):
        model = ctx.load(stage)
        on_test = evaluate(model.module, model.preprocess, test, ctx.task)[0]
        on_val = evaluate(model.module, model.preprocess, ctx.datasets[1], ctx.task)[0]
        row = next(row for row in report["rows"] if row["name"] == stage)
        assert row["metrics"]["accuracy"] == pytest.approx(on_test["accuracy"])
        meta = json.loads((out / "tiny" / stage / "meta.json").read_text())  # chosen and recorded on validation
        assert meta["metrics"]["accuracy"] == pytest.approx(on_val["accuracy"])
