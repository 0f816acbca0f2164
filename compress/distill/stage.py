"""The distillation stages of a recipe: teacher → student baseline (stage 1) → student KD (stage 2).

Each stage reads the recipe and upstream outputs from the run folder, writes its own outputs
atomically, records an inputs hash, and is skipped by `kdtool run` when nothing changed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from compress.context import Context
from compress.core import determinism
from compress.core.atomic import read_json, sha256_file, write_json
from compress.core.errors import KdtoolError
from compress.core.progress import console, count_text
from compress.core.runfolder import (
    KD_STUDENT,
    TRAINING_STAGES,
    begin_stage,
    finish_stage,
    lone_marker_removed,
    prepare_stage,
    unfinished_here,
)
from compress.data.loader import example_batch
from compress.data.transfer import labeled_part
from compress.distill import distributed
from compress.distill.sanity import teacher_warnings
from compress.distill.trainer import fit, predict
from compress.models.build import BuiltModel, build_model, check_model_io, count_params
from compress.models.weights import load_weights
from recipes.schema import CacheConfig, DataConfig, TrainConfig

STAGES = TRAINING_STAGES


@dataclass
class StageOutcome:
    """What a stage did: ran, resumed or was skipped; where; its metrics and time."""

    name: str
    action: str
    folder: Path
    metrics: dict[str, float]
    seconds: float






def run_stage(ctx: Context, stage: str, force: bool = False, resume: bool = False) -> StageOutcome:
    """Run (or skip, or resume) one distillation stage."""
    folder = ctx.run.stage(stage)
    expected = ctx.stage_hash(stage)
    distributed.setup()  # under torchrun rank 0 alone prepares (may empty) the folder; the others follow
    action = None
    if distributed.is_main():
        # a run of these very inputs that was killed or interrupted goes on where it stopped: no flag needed
        continuing = not force and unfinished_here(folder, expected)
        action = prepare_stage(folder, expected, force, resume or continuing)
        if action == "resume" and continuing and not resume:
            console.print(f"[dim]{stage}: continuing the unfinished run in {folder}[/]")
        if action == "run":
            begin_stage(folder, expected)
    action = distributed.broadcast_object(action)
    if action == "skip":
        metrics = read_json(folder / "meta.json").get("metrics", {})
        console.print(f"[dim]{stage}: reused {folder} (inputs unchanged)[/]")
        return StageOutcome(stage, "skipped", folder, metrics, 0.0)
    with lone_marker_removed(folder):  # a stage that fails before writing anything leaves no trace
        return _run(ctx, stage, folder, expected, action)


def _run(ctx: Context, stage: str, folder: Path, expected: str, action: str) -> StageOutcome:
    """Train (or continue), score and record one stage whose folder `prepare_stage` made ready."""
    start = time.perf_counter()
    r = ctx.recipe
    train_ds, val_ds = ctx.datasets
    history: list[dict[str, Any]] = []
    model, cfg, teacher = _stage_models(ctx, stage)
    _check_fits(model, ctx, "teacher" if stage == "teacher" else "student")
    if stage != KD_STUDENT:  # the transfer set (unlabeled samples) is for distillation only
        train_ds = labeled_part(train_ds)
    cache = None
    if stage == KD_STUDENT and r.distill.cache.enabled:
        cache = teacher_cache(ctx, teacher, train_ds, cfg)
        warn_few_views(r.data, r.distill.cache, cfg.epochs)
    if cfg is not None and cfg.epochs > 0:
        model.module.train()
        result = fit(model, train_ds, val_ds, ctx.task, cfg, folder, data_cfg=r.data, teacher=teacher,
                     distill=r.distill if teacher is not None else None, teacher_cache=cache,
                     resume=action == "resume", label=stage,
                     on_epoch=(lambda record: ctx.on_epoch(stage, record)) if ctx.on_epoch else None)
        if result.interrupted:
            raise KdtoolError(f"{stage} was interrupted (SIGTERM); its state is in {folder}",
                              "continue with --resume", exit_code=128 + 15)  # the shell's code for SIGTERM
        history = result.history
        load_weights(model.module, folder / "best.safetensors", stage)
    else:
        from compress.distill.checkpoint import save_weights

        save_weights(model.module, folder / "best.safetensors")
    outputs, val_targets = predict(model.module, model.preprocess, val_ds)
    metrics, metric_notes = ctx.task.score(outputs, val_targets)
    warnings = teacher_warnings(ctx.task, outputs, val_targets) if stage == "teacher" else []
    for line in warnings:
        console.print(f"[yellow]warning: {line}[/]")
    seconds = time.perf_counter() - start
    write_json(folder / "metrics.json", {"metrics": metrics, "history": history})
    finish_stage(folder, expected, {
        "stage": stage, "arch": model.arch, "params": count_params(model.module), "metrics": metrics,
        "metric_notes": metric_notes, "warnings": warnings,
        "primary_metric": ctx.task.primary_metric, "seconds": round(seconds, 2),
        "outputs_sha256": sha256_file(folder / "best.safetensors"), "preprocess": model.preprocess.to_dict(),
        "torch": torch.__version__, "provenance": determinism.provenance(),
        **({"origin": teacher_origin(r.teacher)} if stage == "teacher" else {}),
    })
    value = metrics[ctx.task.primary_metric]
    console.print(f"{stage}: val {ctx.task.primary_metric}={'null' if value is None else f'{value:.4f}'} "
                  f"({count_text(count_params(model.module))} params, {seconds:.1f} s)")
    return StageOutcome(stage, "resumed" if action == "resume" else "ran", folder, metrics, seconds)


def teacher_cache(ctx: Context, teacher: BuiltModel, train_ds, train: TrainConfig):
    """The teacher-output cache a KD training reads (`distill.cache`), built or reused when its key matches.

    It lives in the sweep's shared cache folder when there is one (`ctx.teacher_cache_dir`), else in
    `student_kd/teacher_cache`: distillation and pruning's recovery share it. The threads are pinned
    first, as for training: the cached outputs depend on them too.
    """
    determinism.configure(train.threads)
    from compress.distill.teacher_cache import TeacherCache

    return TeacherCache.build(teacher, train_ds, ctx.recipe.data, ctx.recipe.distill.cache,
                              ctx.teacher_cache_dir or ctx.run.stage(KD_STUDENT, "teacher_cache"), seed=train.seed)


def _stage_models(ctx: Context, stage: str) -> tuple[BuiltModel, TrainConfig | None, BuiltModel | None]:
    """The model a stage trains (initialised as the stage wants), its training config (None: not
    trained here), and the teacher it distills from (student_kd only)."""
    r = ctx.recipe
    teacher = None
    if stage == "teacher":
        model = build_model(r.teacher, ctx.task.num_outputs, r.data, "teacher")
        cfg = None if r.teacher.checkpoint is not None else r.teacher.train  # a given checkpoint wins
        if r.teacher.checkpoint is not None and r.teacher.train is not None:
            console.print(f"[yellow]teacher: using teacher.checkpoint {r.teacher.checkpoint} as it is; "
                          "teacher.train is not used (remove the checkpoint to train the teacher here)[/]")
        if r.teacher.self_distill:  # born-again: the stage-1 student becomes the teacher, as it is
            baseline = ctx.run.stage("student_baseline", "best.safetensors")
            if not baseline.exists():
                raise KdtoolError(f"teacher.self_distill: {baseline} does not exist yet",
                                  f"run the baseline first (`{ctx.command('distill', '--stage', 'baseline')}`)")
            load_weights(model.module, baseline, "student_baseline")
    elif stage == "student_baseline":
        model = build_model(r.student, ctx.task.num_outputs, r.data, "student")
        cfg = r.student.train
    else:
        model = build_model(r.student, ctx.task.num_outputs, r.data, "student")
        cfg = ctx.kd_train
        if cfg.init == "baseline":
            load_weights(model.module, ctx.run.stage("student_baseline", "best.safetensors"), "student_baseline")
        teacher = ctx.load("teacher")
        _check_fits(teacher, ctx, "teacher")
    return model, cfg, teacher


def teacher_origin(cfg) -> str:
    """Where the teacher came from, in the card's words."""
    if cfg.self_distill:
        return "the student baseline's best checkpoint (self-distillation)"
    if cfg.checkpoint is not None:
        return f"checkpoint {cfg.checkpoint} (not trained here)"
    if cfg.train is not None and cfg.train.epochs > 0:
        epochs = f"{cfg.train.epochs} epoch{'s' if cfg.train.epochs != 1 else ''}"
        return f"trained here ({epochs}{', from pretrained weights' if cfg.pretrained else ''})"
    return "pretrained weights (not trained here)" if cfg.pretrained else "untrained (train.epochs 0)"


def _check_fits(built: BuiltModel, ctx: Context, role: str) -> None:
    """A model that cannot take the data's input, or whose outputs do not fit the task, fails early."""
    train_ds, _ = ctx.datasets
    raw = example_batch(train_ds)
    check_model_io(built, raw, ctx.task, role)


def run_distill(ctx: Context, which: str = "both", force: bool = False, resume: bool = False) -> list[StageOutcome]:
    """`kdtool distill`: teacher (if it must be trained or evaluated), then baseline and/or KD."""
    stages = {"baseline": ["teacher", "student_baseline"], "kd": ["teacher", KD_STUDENT],
              "both": list(STAGES)}[which]
    stages = [s for s in stages if s != "teacher"]
    outcomes = run_teacher(ctx, force=force, resume=resume)
    return outcomes + [run_stage(ctx, s, force=force, resume=resume) for s in stages if s not in
                       {o.name for o in outcomes}]


def run_teacher(ctx: Context, force: bool = False, resume: bool = False) -> list[StageOutcome]:
    """The teacher stage, preceded by what it is made from: with teacher.self_distill, the baseline."""
    first = ["student_baseline"] if ctx.recipe.teacher.self_distill else []
    return [run_stage(ctx, s, force=force, resume=resume) for s in (*first, "teacher")]


def warn_few_views(data_cfg: DataConfig, cache_cfg: CacheConfig, epochs: int) -> None:
    """Say so when a teacher cache gives the student fewer augmented views than online KD would.

    With `views` < epochs each sample is seen in at most `views` recorded crops/flips, while the
    baseline draws a fresh one every epoch. On the quickstart (10 epochs, 5 seeds) 4 views lost the
    whole KD gain (+0.0071 accuracy online, -0.0004 cached): the cache saves time, not accuracy.
    """
    a = data_cfg.augment
    augmenting = a.hflip or a.crop_pad > 0 or a.time_shift > 0
    if augmenting and cache_cfg.views < epochs:
        console.print(f"[yellow]distill.cache.views {cache_cfg.views} < {epochs} epochs: the student sees "
                      f"{cache_cfg.views} recorded augmented views per sample instead of a new one each epoch "
                      "(less augmentation than the baseline); raise views or disable the cache if KD "
                      "underperforms[/]")
