"""Self-distillation (born-again networks): the teacher is the stage-1 student, stage 2 retrains it."""

import pytest
import torch
from safetensors.torch import load_file

from compress.context import Context
from compress.core.errors import KdtoolError
from compress.core.runfolder import RunFolder
from compress.distill.stage import run_distill
from recipes.load import load_recipe
from recipes.schema import Recipe

STUDENT = {"arch": "resnet10t", "kwargs": {"channels": [4, 8, 16, 32]}, "input_size": 16,
           "train": {"epochs": 2, "lr": 0.01}}


def recipe(**teacher) -> dict:
    return {"name": "born_again", "task": {"kind": "multiclass", "num_classes": 10},
            "data": {"source": "digits", "image_size": 16, "channels": 1, "limit": 160, "batch_size": 32},
            "teacher": teacher or {"self_distill": True}, "student": STUDENT,
            "distill": {"temperature": 4, "alpha": 0.3, "train": {"epochs": 2, "lr": 0.01, "init": "scratch"}}}


def test_self_distill_teacher_is_built_as_the_student():
    r = Recipe.model_validate(recipe())
    assert r.teacher.self_distill
    assert (r.teacher.arch, r.teacher.kwargs, r.teacher.input_size) == ("resnet10t", {"channels": [4, 8, 16, 32]}, 16)


@pytest.mark.parametrize("teacher, fault", [
    ({"self_distill": True, "train": {"epochs": 1}}, "remove teacher.train"),
    ({"self_distill": True, "checkpoint": "t.pt"}, "remove teacher.checkpoint"),
    ({"self_distill": True, "arch": "resnet18"}, "teacher.arch is 'resnet18'"),
    ({"train": {"epochs": 1}}, "needs an arch"),
])
def test_self_distill_conflicts_are_named(tmp_path, teacher, fault):
    import yaml

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe(**teacher)))
    with pytest.raises(KdtoolError, match=fault):
        load_recipe(path)


def test_born_again_run_trains_baseline_then_uses_it_as_teacher(tmp_path, one_thread):
    ctx = Context(Recipe.model_validate(recipe()), RunFolder.for_recipe(tmp_path, "born_again"))
    outcomes = run_distill(ctx, "both")
    assert [o.name for o in outcomes] == ["student_baseline", "teacher", "student_kd"]
    run = tmp_path / "born_again"
    baseline = load_file(run / "student_baseline" / "best.safetensors")
    teacher = load_file(run / "teacher" / "best.safetensors")
    assert baseline.keys() == teacher.keys()
    assert all(torch.equal(baseline[k], teacher[k]) for k in baseline)
    assert outcomes[1].metrics == outcomes[0].metrics  # the teacher IS the baseline student
    kd_history = (run / "student_kd" / "metrics.json").read_text()
    assert '"loss_soft"' in kd_history and '"teacher_agreement"' in kd_history  # distilled from it
    # a rerun reuses all three; a changed baseline makes the teacher stale (its hash includes the weights)
    assert [o.action for o in run_distill(ctx, "kd")] == ["skipped", "skipped", "skipped"]
    before = ctx.stage_hash("teacher")
    ctx2 = Context(Recipe.model_validate({**recipe(), "student": {**STUDENT, "train": {"epochs": 1, "lr": 0.01}}}),
                   RunFolder.for_recipe(tmp_path, "born_again"))
    run_distill(ctx2, "baseline", force=True)
    assert ctx2.stage_hash("teacher") != before


def test_self_distill_teacher_needs_the_baseline_first(tmp_path):
    from compress.distill.stage import run_stage

    ctx = Context(Recipe.model_validate(recipe()), RunFolder.for_recipe(tmp_path, "born_again"))
    with pytest.raises(KdtoolError, match="run the baseline first"):
        run_stage(ctx, "teacher")
