"""The transfer set: unlabeled samples train on the teacher's outputs only; teacher and baseline never see them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_fixtures import cli, write_recipe
from torch import nn

from compress.core.errors import KdtoolError
from compress.core.tasks import Task
from compress.data.loader import build_datasets
from compress.data.transfer import UNLABELED, TransferSet, labeled_mask, labeled_part
from compress.distill.objective import KDObjective
from recipes.schema import DataConfig, DistillConfig

TASK = Task("multiclass", 10)


def _objective() -> tuple[KDObjective, nn.Module]:
    student = nn.Linear(6, 10)
    return KDObjective(TASK, DistillConfig(temperature=4.0, alpha=0.5), student, None), student


def test_without_labels_only_the_soft_term_trains():
    """All rows unlabeled: the hard loss is exactly 0 and the whole gradient is the soft term's."""
    objective, student = _objective()
    x, t_out = torch.randn(8, 6), torch.randn(8, 10)
    targets = torch.full((8,), UNLABELED)
    terms = objective(student(x), {}, t_out, None, targets, alpha=0.5, temperature=4.0)
    assert terms["hard"].item() == 0.0
    hard_grad = torch.autograd.grad(terms["hard"], student.weight, retain_graph=True)[0]
    assert torch.count_nonzero(hard_grad) == 0
    total_grad = torch.autograd.grad(terms["total"], student.weight, retain_graph=True)[0]
    soft_grad = torch.autograd.grad(0.5 * terms["soft"], student.weight)[0]
    assert torch.count_nonzero(total_grad) > 0
    torch.testing.assert_close(total_grad, soft_grad, rtol=0, atol=0)


def test_hard_loss_is_the_mean_over_the_labeled_rows():
    objective, student = _objective()
    x, t_out = torch.randn(6, 6), torch.randn(6, 10)
    targets = torch.tensor([3, UNLABELED, 1, UNLABELED, UNLABELED, 7])
    out = student(x)
    terms = objective(out, {}, t_out, None, targets, alpha=0.5, temperature=4.0)
    keep = targets >= 0
    expected = torch.nn.functional.cross_entropy(out[keep], targets[keep])
    torch.testing.assert_close(terms["hard"], expected)
    full = objective(out, {}, t_out, None, torch.tensor([3, 0, 1, 0, 0, 7]), alpha=0.5, temperature=4.0)
    torch.testing.assert_close(terms["soft"], full["soft"])  # every row keeps its soft term


def test_marker_for_float_targets_is_nan():
    targets = torch.tensor([[1.0, 0.0], [float("nan"), float("nan")], [0.0, 0.0]])
    assert labeled_mask(targets).tolist() == [True, False, True]


def test_labeled_fraction_hides_labels_stratified_and_keeps_validation():
    cfg = DataConfig(source="digits", image_size=8, channels=1, val_fraction=0.25, labeled_fraction=0.1)
    train, val = build_datasets(cfg, TASK)
    full_train, full_val = build_datasets(cfg.model_copy(update={"labeled_fraction": 1.0}), TASK)
    assert isinstance(train, TransferSet) and len(train) == len(full_train) and len(val) == len(full_val)
    assert torch.equal(val.targets, full_val.targets)
    shown = train.targets
    kept = shown != UNLABELED
    for c in range(10):  # ceil(10 % of each class) keeps its label
        n_c = int((full_train.targets == c).sum())
        assert int((shown == c).sum()) == int(np.ceil(0.1 * n_c))
    assert torch.equal(shown[kept], full_train.targets[kept])  # kept labels are the true ones
    raw, target, index = train[int(np.flatnonzero(~kept.numpy())[0])]
    assert int(target) == UNLABELED and raw.shape == (1, 8, 8)
    labeled = labeled_part(train)  # what teacher and baseline train on: labeled samples, as many steps
    assert len(labeled) == len(full_train)
    assert bool((labeled.targets >= 0).all())
    assert set(labeled.targets.unique().tolist()) == set(range(10))


def _write_pngs(folder, n: int, size: int = 12) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(folder / f"u{i}.png")


def test_unlabeled_root_joins_the_training_set_and_the_teacher_cache(tmp_path):
    from compress.distill.teacher_cache import TeacherCache
    from compress.models.build import build_model
    from recipes.schema import CacheConfig, ModelConfig

    _write_pngs(tmp_path / "frames" / "day1", 5)
    cfg = DataConfig(source="digits", image_size=8, channels=1, limit=40, unlabeled_root=tmp_path / "frames")
    train, _ = build_datasets(cfg, TASK)
    assert len(train) == 40 + 5 and len(labeled_part(train)) == 40
    assert all(int(train[j][1]) == UNLABELED and train[j][2] == j for j in range(40, 45))
    teacher = build_model(ModelConfig(arch="test_resnet"), 10, cfg, "teacher")
    teacher.module.eval()
    cache = TeacherCache.build(teacher, train, cfg, CacheConfig(enabled=True, dtype="float32"), tmp_path / "cache")
    assert cache.outputs.shape[0] == 45
    raw = torch.stack([train[j][0] for j in range(40, 45)])
    with torch.no_grad():
        expected = teacher.module(teacher.preprocess(raw))
    _, served = cache.lookup(raw, torch.arange(40, 45), torch.Generator().manual_seed(0))
    torch.testing.assert_close(served, expected, rtol=1e-5, atol=1e-5)


def test_unlabeled_root_errors_name_the_key(tmp_path):
    missing = DataConfig(source="digits", image_size=8, channels=1, limit=20, unlabeled_root=tmp_path / "nope")
    with pytest.raises(KdtoolError, match="data.unlabeled_root .*nope is not a folder"):
        build_datasets(missing, TASK)
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.wav").write_bytes(b"RIFF")
    audio = DataConfig(source="digits", image_size=8, channels=1, limit=20, unlabeled_root=tmp_path / "clips")
    with pytest.raises(KdtoolError, match="holds audio files but the training data is image"):
        build_datasets(audio, TASK)


def test_new_files_in_unlabeled_root_rerun_distillation(tmp_path):
    """The KD stage's inputs hash covers the transfer set's files, not just the folder's name."""
    from compress.context import Context
    from compress.core.runfolder import RunFolder
    from recipes.load import load_recipe

    _write_pngs(tmp_path / "frames", 3)
    recipe, _, _ = load_recipe(write_recipe(tmp_path, {"data": {"unlabeled_root": str(tmp_path / "frames")}}))
    ctx = Context(recipe, RunFolder.for_recipe(tmp_path / "runs", "tiny"))
    before = ctx.stage_hash("student_kd"), ctx.stage_hash("student_baseline")
    _write_pngs(tmp_path / "frames" / "more", 1)
    after = ctx.stage_hash("student_kd"), ctx.stage_hash("student_baseline")
    assert before[0] != after[0] and before[1] == after[1]


def _spy_on_fit(monkeypatch, module) -> list[tuple[str, torch.Tensor]]:
    """Record (label, training targets) of every fit() a module calls, then train for real."""
    seen: list[tuple[str, torch.Tensor]] = []
    real = module.fit

    def spy(student, train_ds, *args, label="train", **kwargs):
        seen.append((label, torch.stack([torch.as_tensor(train_ds[i][1]) for i in range(len(train_ds))])))
        return real(student, train_ds, *args, label=label, **kwargs)

    monkeypatch.setattr(module, "fit", spy)
    return seen


def test_label_scarce_stages_teacher_and_baseline_see_labels_only(tmp_path, monkeypatch):
    import compress.distill.stage

    recipe = write_recipe(tmp_path, {"data": {"labeled_fraction": 0.25}, "teacher": {"train": {"epochs": 1}},
                                     "student": {"train": {"epochs": 1}}, "distill": {"train": {"epochs": 1}}})
    seen = _spy_on_fit(monkeypatch, compress.distill.stage)
    result = cli("distill", recipe, "--out", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    by_stage = dict(seen)
    assert set(by_stage) == {"teacher", "student_baseline", "student_kd"}
    for stage in ("teacher", "student_baseline"):  # labeled samples only, as many as the whole split
        assert bool((by_stage[stage] >= 0).all()) and len(by_stage[stage]) == 120
    kd = by_stage["student_kd"]
    assert len(kd) == 120 and int((kd == UNLABELED).sum()) == 120 - int((kd >= 0).sum()) > 60
    meta = json.loads((tmp_path / "runs" / "tiny" / "student_kd" / "meta.json").read_text())
    assert meta["provenance"]["determinism"]["threads"] == 2


def test_label_scarce_ablation_baseline_on_labels_kd_on_the_transfer_set(tmp_path, monkeypatch):
    import compress.distill.ablation

    recipe = write_recipe(tmp_path, {"data": {"labeled_fraction": 0.25}, "teacher": {"train": {"epochs": 1}},
                                     "student": {"train": {"epochs": 1}}, "distill": {"train": {"epochs": 1}}})
    seen = _spy_on_fit(monkeypatch, compress.distill.ablation)
    out = tmp_path / "runs"
    result = cli("distill", recipe, "--out", out, "--ablate", "1", "--folds", "2")
    assert result.exit_code == 0, result.stderr
    summary = json.loads((out / "tiny" / "ablation" / "ablation.json").read_text())
    counts = summary["transfer_set"]
    assert summary["labeled_fraction"] == 0.25 and len(counts) == 2
    assert all(c["labeled"] + c["unlabeled"] == 75 and c["unlabeled"] > c["labeled"] for c in counts)
    for label, targets in seen:
        if label.startswith(("teacher", "baseline")):
            assert bool((targets >= 0).all()) and len(targets) == 75, label
        else:
            assert label.startswith("kd") and int((targets == UNLABELED).sum()) > 0
    assert {label.split()[0] for label, _ in seen} == {"teacher", "baseline", "kd"}
    provenance = summary["provenance"]
    assert provenance["commit"] and provenance["versions"]["torch"] == torch.__version__
    assert provenance["determinism"]["threads"] == 2
