"""`kdtool distill --ablate N`: the table's numbers are the per-seed results, paired by seed."""

from __future__ import annotations

import json
import statistics

from cli_fixtures import cli, write_recipe

SMALL = {"limit": 64}
"""64 training digits (2 steps an epoch): the ablation's bookkeeping, not its accuracy, is under test."""


def test_ablation_reports_means_spread_and_paired_gains(tmp_path):
    recipe = write_recipe(tmp_path, {"data": SMALL, "student": {"train": {"epochs": 1}},
                                     "distill": {"train": {"epochs": 1}}})
    out = tmp_path / "runs"
    result = cli("distill", recipe, "--out", out, "--ablate", "2")
    assert result.exit_code == 0, result.stderr
    summary = json.loads((out / "tiny" / "ablation" / "ablation.json").read_text())
    base, kd = summary["baseline"]["values"], summary["kd"]["values"]
    assert len(base) == len(kd) == 2 and all(0.0 <= v <= 1.0 for v in base + kd)
    assert summary["baseline"]["mean"] == statistics.fmean(base)
    assert summary["kd"]["std"] == statistics.stdev(kd)
    assert summary["paired_gain"]["values"] == [k - b for k, b in zip(kd, base, strict=True)]
    assert summary["gain"] == statistics.fmean(kd) - statistics.fmean(base)
    assert summary["kd_wins"] == sum(k > b for k, b in zip(kd, base, strict=True))
    assert summary["significant"] == (summary["gain"] > max(summary["baseline"]["std"], summary["kd"]["std"]))
    assert "paired per seed" in result.stdout + result.stderr


def test_sigterm_stops_the_whole_ablation(tmp_path, monkeypatch):
    """A SIGTERM inside one seed's training ends the ablation with 143 instead of starting the next seed."""
    import compress.distill.ablation
    from compress.distill.trainer import FitResult

    calls = []

    def interrupted_fit(*args, label="", **kwargs):
        calls.append(label)
        return FitResult(float("nan"), 0, [], 0.0, interrupted=True)

    recipe = write_recipe(tmp_path, {"data": SMALL, "student": {"train": {"epochs": 1}},
                                     "distill": {"train": {"epochs": 1}}})
    cli("distill", recipe, "--out", tmp_path / "runs", "--stage", "baseline")  # the teacher, trained for real
    monkeypatch.setattr(compress.distill.ablation, "fit", interrupted_fit)
    result = cli("distill", recipe, "--out", tmp_path / "runs", "--ablate", "3")
    assert result.exit_code == 143, result.stderr
    assert calls == ["baseline seed 0"]
    assert "ablation was interrupted (SIGTERM) during baseline seed 0" in result.stderr
    assert not (tmp_path / "runs" / "tiny" / "ablation" / "ablation.json").exists()


def test_folds_score_every_sample_once_with_a_teacher_per_fold(tmp_path):
    """--folds K: each seed's metric is the size-weighted mean over K folds; each fold trains its own teacher."""
    recipe = write_recipe(tmp_path, {"data": SMALL, "teacher": {"train": {"epochs": 1}},
                                     "student": {"train": {"epochs": 1}}, "distill": {"train": {"epochs": 1}}})
    out = tmp_path / "runs"
    result = cli("distill", recipe, "--out", out, "--ablate", "1", "--folds", "3")
    assert result.exit_code == 0, result.stderr
    summary = json.loads((out / "tiny" / "ablation" / "ablation.json").read_text())
    assert summary["folds"] == 3
    run = out / "tiny" / "ablation"
    teachers = sorted(p.parent.parent.name for p in run.glob("fold*of3/teacher/best.safetensors"))
    assert teachers == ["fold1of3", "fold2of3", "fold3of3"]
    from compress.core.tasks import Task
    from compress.data.loader import build_datasets
    from recipes.load import load_recipe

    r, _, _ = load_recipe(recipe)
    train, val = build_datasets(r.data, Task.from_config(r.task))
    assert summary["validation_samples"] == len(train) + len(val)  # every sample is validation once
    for kind in ("baseline", "kd"):
        for seed, folds in enumerate(summary["by_fold"][kind]):
            assert len(folds) == 3
            assert min(folds) <= summary[kind]["values"][seed] <= max(folds)
    # a rerun reuses the fold teachers (same recipe): no "teacher fold" training line
    again = cli("distill", recipe, "--out", out, "--ablate", "1", "--folds", "3")
    assert again.exit_code == 0, again.stderr
    assert "teacher fold1of3: reused" in again.stdout + again.stderr


def test_cross_validation_folds_partition_the_pooled_samples():
    import torch

    from compress.core.errors import KdtoolError
    from compress.core.tasks import Task
    from compress.data.folds import cross_validation_folds
    from compress.data.registry import TensorSamples

    x = torch.arange(40, dtype=torch.float32).reshape(40, 1)
    y = torch.tensor([0, 1] * 20)
    train, val = TensorSamples(x[:30], y[:30]), TensorSamples(x[30:], y[30:])
    folds = cross_validation_folds(train, val, Task("multiclass", 2), 4)
    seen = sorted(float(fv[i][0]) for _, fv in folds for i in range(len(fv)))
    assert seen == [float(v) for v in range(40)]  # each sample validates exactly once
    for ft, fv in folds:
        assert len(ft) + len(fv) == 40 and not {float(ft[i][0]) for i in range(len(ft))} & {
            float(fv[i][0]) for i in range(len(fv))}
        assert [ft[i][2] for i in range(len(ft))] == list(range(len(ft)))  # re-indexed for the teacher cache
        assert fv.targets.float().mean() == 0.5  # stratified
    try:
        cross_validation_folds(train, val, Task("multiclass", 2), 1)
        raise AssertionError("1 fold accepted")
    except KdtoolError as err:
        assert "at least 2 folds" in err.message


def test_folds_without_ablate_is_refused(tmp_path):
    recipe = write_recipe(tmp_path, {})
    result = cli("distill", recipe, "--out", tmp_path / "runs", "--folds", "3")
    assert result.exit_code == 2 and "--folds 3 is only used by the ablation" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_folds_with_self_distillation_train_each_fold_teacher_as_the_baseline(tmp_path):
    recipe = write_recipe(tmp_path, {"teacher": None, "student": {"train": {"epochs": 1}},
                                     "distill": {"train": {"epochs": 1}}})
    import yaml

    raw = yaml.safe_load(recipe.read_text())
    raw["teacher"] = {"self_distill": True}
    recipe.write_text(yaml.safe_dump(raw))
    out = tmp_path / "runs"
    result = cli("distill", recipe, "--out", out, "--ablate", "1", "--folds", "2")
    assert result.exit_code == 0, result.stderr
    summary = json.loads((out / "tiny" / "ablation" / "ablation.json").read_text())
    assert summary["folds"] == 2 and len(summary["by_fold"]["teacher"]) == 2
    meta = json.loads((out / "tiny" / "ablation" / "fold1of2" / "teacher" / "meta.json").read_text())
    assert meta["complete"]
