"""`kdtool distill --ablate N [--folds K]`: does KD really help? Baseline vs KD students over N seeds, same budget.

Each seed trains a student on hard labels and a student with the recipe's KD, both from scratch
with the same epochs and optimizer (distill.train) and the same initial weights, and the table
gives mean ± std of the primary metric, the gain, whether the gain exceeds the seed-to-seed spread,
the paired per-seed gain and retention vs the teacher.

With `--folds K` every seed is scored by K-fold cross-validation (`compress.data.folds`): the training
and validation splits are pooled, each fold trains its own teacher (when the recipe trains it here:
a teacher must never have seen the samples its students are scored on), and the seed's metric is
the size-weighted mean over the folds, i.e. over every sample once. On small datasets this is what
makes one seed's number precise enough to compare.

Label-scarce mode (`--set data.labeled_fraction=0.1`, or `data.unlabeled_root`): the teacher and the
baseline train on the labeled samples only (repeated to the split's size: as many steps), the KD
student on those plus the transfer set, whose samples it learns from the teacher's outputs alone
(`compress.data.transfer`). With folds, each fold's training part hides its own share of labels.
`ablation.json` records the commit, versions and determinism settings it was made with.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset

from compress.context import Context, file_hash
from compress.core import determinism
from compress.core.atomic import write_json
from compress.core.errors import KdtoolError
from compress.core.progress import console
from compress.core.runfolder import finish_stage, inputs_hash, prepare_stage
from compress.core.tasks import lower_is_better, retention
from compress.data.transfer import fully_labeled, labeled_part, transfer_set
from compress.distill.stage import run_teacher
from compress.distill.trainer import evaluate, fit
from compress.models.build import BuiltModel, build_model
from compress.models.weights import load_weights


@dataclass
class _Split:
    """One train/validation split with its teacher (the recipe's split, or one cross-validation fold)."""

    name: str
    train: Dataset
    val: Dataset
    teacher: BuiltModel
    teacher_metric: float
    cache: Any = None


def run_ablation(ctx: Context, seeds: int = 3, force: bool = False, folds: int = 1) -> dict[str, Any]:
    """Train baseline and KD students for `seeds` seeds (on `folds` folds each); write and print `ablation.json`."""
    r = ctx.recipe
    metric = ctx.task.primary_metric
    cfg = ctx.kd_train.model_copy(update={"init": "scratch"})
    splits = _splits(ctx, folds, force, cfg.seed)
    results: dict[str, list[float]] = {"baseline": [], "kd": []}
    by_fold: dict[str, list[list[float]]] = {"baseline": [], "kd": []}
    for seed in range(seeds):
        for kind in ("baseline", "kd"):
            values = []
            for split in splits:
                student = build_model(r.student.model_copy(update={"checkpoint": None}), ctx.task.num_outputs, r.data,
                                      "student", seed=seed)  # per-seed initial weights, same for both kinds
                where = f"{kind}_seed{seed}" + (f"_{split.name}" if folds > 1 else "")
                train = split.train if kind == "kd" else labeled_part(split.train)  # the baseline: labels only
                out = fit(student, train, split.val, ctx.task, cfg.model_copy(update={"seed": seed}),
                          ctx.run.stage("ablation", where), data_cfg=r.data,
                          teacher=split.teacher if kind == "kd" else None, distill=r.distill if kind == "kd" else None,
                          teacher_cache=split.cache if kind == "kd" else None,
                          label=f"{kind} seed {seed}" + (f" {split.name}" if folds > 1 else ""))
                if out.interrupted:  # SIGTERM stops the whole ablation, not just this seed's run
                    done = ", ".join(f"{k} {v:.4f}" for k, vals in results.items() for v in vals) or "none"
                    raise KdtoolError(f"ablation was interrupted (SIGTERM) during {kind} seed {seed}; finished "
                                      f"runs: {done}", "rerun `kdtool distill --ablate N` (the teacher is reused)",
                                      exit_code=128 + 15)
                values.append(out.best_metric)
            by_fold[kind].append(values)
            results[kind].append(_weighted_mean(values, [len(s.val) for s in splits]))
            folds_note = f" (folds: {', '.join(f'{v:.4f}' for v in values)})" if folds > 1 else ""
            console.print(f"  seed {seed} {kind}: {metric}={results[kind][-1]:.4f}{folds_note}")
    teacher_metric = _weighted_mean([s.teacher_metric for s in splits], [len(s.val) for s in splits])
    summary = _summarize(results, metric, teacher_metric, seeds, cfg.epochs)
    summary.update({"folds": folds, "validation_samples": sum(len(s.val) for s in splits),
                    "labeled_fraction": r.data.labeled_fraction, "transfer_set": _transfer_counts(splits),
                    "provenance": determinism.provenance()})
    if folds > 1:
        summary["by_fold"] = {**by_fold, "teacher": [s.teacher_metric for s in splits]}
    write_json(ctx.run.stage("ablation", "ablation.json"), summary)
    scored = f" ({folds}-fold cross-validation, {summary['validation_samples']} samples)" if folds > 1 else ""
    console.print(f"{metric}{scored}: teacher {teacher_metric:.4f} | baseline {summary['baseline']['mean']:.4f} ± "
                  f"{summary['baseline']['std']:.4f} | KD {summary['kd']['mean']:.4f} ± {summary['kd']['std']:.4f} | "
                  f"gain {summary['gain']:+.4f} ({'larger' if summary['significant'] else 'NOT larger'} than the "
                  f"seed spread {summary['spread']:.4f}); paired per seed: {summary['paired_gain']['mean']:+.4f} ± "
                  f"{summary['paired_gain']['std']:.4f}, KD better on {summary['kd_wins']}/{seeds} seeds"
                  f"{', tied on ' + str(summary['ties']) if summary['ties'] else ''}")
    return summary


def _summarize(results: dict[str, list[float]], metric: str, teacher_metric: float, seeds: int,
               epochs: int) -> dict[str, Any]:
    """Mean ± std per kind, the gain against the larger seed spread, and the paired per-seed gain."""
    summary: dict[str, Any] = {"metric": metric, "teacher": teacher_metric, "seeds": seeds, "epochs": epochs}
    for kind, values in results.items():
        summary[kind] = {"values": values, "mean": statistics.fmean(values),
                         "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                         "retention": retention(metric, statistics.fmean(values), teacher_metric)}
    gain = summary["kd"]["mean"] - summary["baseline"]["mean"]
    spread = max(summary["kd"]["std"], summary["baseline"]["std"])
    # paired by seed (same initial weights, data order and folds): the per-seed gain and how often KD won
    sign = -1.0 if lower_is_better(metric) else 1.0
    paired = [sign * (k - b) for k, b in zip(results["kd"], results["baseline"], strict=True)]
    summary.update({"gain": gain, "spread": spread, "significant": sign * gain > spread,
                    "paired_gain": {"values": paired, "mean": statistics.fmean(paired),
                                    "std": statistics.stdev(paired) if len(paired) > 1 else 0.0},
                    "kd_wins": sum(d > 0 for d in paired), "ties": sum(d == 0 for d in paired)})
    return summary


def _transfer_counts(splits: list[_Split]) -> list[dict[str, int]]:
    """Per split: training samples with labels, and without (hidden, or from data.unlabeled_root)."""
    counts = []
    for s in splits:
        labeled = len(getattr(s.train, "labeled_indices", range(len(s.train))))
        counts.append({"labeled": labeled, "unlabeled": len(s.train) - labeled})
    return counts


def _weighted_mean(values: list[float], weights: list[int]) -> float:
    return sum(v * w for v, w in zip(values, weights, strict=True)) / sum(weights)


def _splits(ctx: Context, folds: int, force: bool, seed: int) -> list[_Split]:
    """The recipe's own split with its teacher stage, or K folds, each with a teacher that never saw its validation."""
    r = ctx.recipe
    metric = ctx.task.primary_metric
    train, val = ctx.datasets
    if folds <= 1:  # the recipe's split; its teacher stage trained on the labeled part
        outcome = run_teacher(ctx, force=force)[-1]
        teacher = ctx.load("teacher")
        split = _Split("split", train, val, teacher, outcome.metrics[metric])
        split.cache = _cache(ctx, split, "teacher_cache", seed)
        return [split]
    from compress.data.folds import cross_validation_folds

    # self-distillation: each fold's teacher is the student trained on the fold's hard labels
    trained_here = r.teacher.self_distill or (r.teacher.train is not None and r.teacher.train.epochs > 0)
    shared = None
    if not trained_here:  # a teacher trained elsewhere is the same for every fold
        run_teacher(ctx, force=force)
        shared = ctx.load("teacher")
        console.print("[yellow]--folds: the teacher was not trained here, so it may have seen some of the "
                      "samples a fold validates on; only a teacher trained per fold (teacher.train) is clean[/]")
    splits = []
    labeled, unlabeled = fully_labeled(train)  # folds re-split every label; each fold hides its own share
    for k, (fold_train, fold_val) in enumerate(cross_validation_folds(labeled, val, ctx.task, folds)):
        name = f"fold{k + 1}of{folds}"
        fold_train = transfer_set(fold_train, r.data, ctx.task, unlabeled=unlabeled)
        teacher = shared or _fold_teacher(ctx, name, fold_train, fold_val, force)
        value = evaluate(teacher.module, teacher.preprocess, fold_val, ctx.task)[0][metric]
        split = _Split(name, fold_train, fold_val, teacher, value)
        split.cache = _cache(ctx, split, f"teacher_cache_{name}", seed)
        splits.append(split)
    return splits


def _fold_teacher(ctx: Context, name: str, train: Dataset, val: Dataset, force: bool) -> BuiltModel:
    """The recipe's teacher trained on one fold (reused when the recipe's teacher and data are unchanged)."""
    r = ctx.recipe
    folder = ctx.run.stage("ablation", name, "teacher")
    expected = inputs_hash(r.task, r.data, r.teacher, r.student if r.teacher.self_distill else None,
                           file_hash(r.teacher.checkpoint), name)
    teacher = build_model(r.teacher, ctx.task.num_outputs, r.data, "teacher")
    train_cfg = r.student.train if r.teacher.self_distill else r.teacher.train  # born-again: the baseline's
    if prepare_stage(folder, expected, force) == "skip":
        console.print(f"[dim]teacher {name}: reused {folder}[/]")
    else:
        teacher.module.train()
        out = fit(teacher, labeled_part(train), val, ctx.task, train_cfg, folder, data_cfg=r.data,
                  label=f"teacher {name}")
        if out.interrupted:
            raise KdtoolError(f"ablation was interrupted (SIGTERM) while training the teacher of {name}",
                              "rerun `kdtool distill --ablate N --folds K` (finished fold teachers are reused)",
                              exit_code=128 + 15)
        finish_stage(folder, expected, {"stage": f"teacher {name}", "best_metric": out.best_metric})
    load_weights(teacher.module, folder / "best.safetensors", f"teacher {name}")
    teacher.module.eval()
    return teacher


def _cache(ctx: Context, split: _Split, folder_name: str, seed: int):
    """The teacher-output cache of a split, when the recipe distills from one."""
    r = ctx.recipe
    if not r.distill.cache.enabled:
        return None
    from compress.distill.teacher_cache import TeacherCache

    return TeacherCache.build(split.teacher, split.train, r.data, r.distill.cache,
                              ctx.run.stage("ablation", folder_name), seed=seed)
