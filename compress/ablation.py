"""`kdtool distill --ablate N`: does KD really help? Baseline vs KD students over N seeds, same budget.

Each seed trains a student on hard labels and a student with the recipe's KD, both from scratch
with the same epochs and optimizer (distill.train), and the table gives mean ± std of the primary
metric, the gain, whether the gain exceeds the seed-to-seed spread, and retention vs the teacher.
"""

from __future__ import annotations

import statistics
from typing import Any

from compress.atomic import write_json
from compress.errors import KdtoolError
from compress.models import build_model
from compress.progress import console
from compress.stages import run_stage
from compress.tasks import lower_is_better, retention
from compress.trainer import fit


def run_ablation(ctx, seeds: int = 3, force: bool = False) -> dict[str, Any]:
    """Train baseline and KD students for `seeds` seeds; write and print `ablation.json`."""
    r = ctx.recipe
    teacher_outcome = run_stage(ctx, "teacher", force=force)
    teacher = ctx.load("teacher")
    train_ds, val_ds = ctx.datasets
    metric = ctx.task.primary_metric
    cfg = ctx.kd_train.model_copy(update={"init": "scratch"})
    cache = None
    if r.distill.cache.enabled:
        from compress.teacher_cache import TeacherCache

        cache = TeacherCache.build(teacher, train_ds, r.data, r.distill.cache,
                                   ctx.run.stage("ablation", "teacher_cache"), seed=cfg.seed)
    results: dict[str, list[float]] = {"baseline": [], "kd": []}
    for seed in range(seeds):
        for kind in ("baseline", "kd"):
            student = build_model(r.student.model_copy(update={"checkpoint": None}), ctx.task.num_outputs, r.data,
                                  "student", seed=seed)  # per-seed initial weights, same for both kinds
            out = fit(student, train_ds, val_ds, ctx.task, cfg.model_copy(update={"seed": seed}),
                      ctx.run.stage("ablation", f"{kind}_seed{seed}"), data_cfg=r.data,
                      teacher=teacher if kind == "kd" else None, distill=r.distill if kind == "kd" else None,
                      teacher_cache=cache if kind == "kd" else None, label=f"{kind} seed {seed}")
            if out.interrupted:  # SIGTERM stops the whole ablation, not just this seed's run
                done = ", ".join(f"{k} {v:.4f}" for k, vals in results.items() for v in vals) or "none"
                raise KdtoolError(f"ablation was interrupted (SIGTERM) during {kind} seed {seed}; finished runs: "
                                  f"{done}", "rerun `kdtool distill --ablate N` (the teacher is reused)",
                                  exit_code=128 + 15)
            results[kind].append(out.best_metric)
            console.print(f"  seed {seed} {kind}: {metric}={out.best_metric:.4f}")
    teacher_metric = teacher_outcome.metrics[metric]
    summary = {"metric": metric, "teacher": teacher_metric, "seeds": seeds, "epochs": cfg.epochs}
    for kind, values in results.items():
        summary[kind] = {"values": values, "mean": statistics.fmean(values),
                         "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                         "retention": retention(metric, statistics.fmean(values), teacher_metric)}
    gain = summary["kd"]["mean"] - summary["baseline"]["mean"]
    spread = max(summary["kd"]["std"], summary["baseline"]["std"])
    # paired by seed (same initial weights and data order): the per-seed gain and how often KD won
    sign = -1.0 if lower_is_better(metric) else 1.0
    paired = [sign * (k - b) for k, b in zip(results["kd"], results["baseline"], strict=True)]
    summary.update({"gain": gain, "spread": spread, "significant": sign * gain > spread,
                    "paired_gain": {"values": paired, "mean": statistics.fmean(paired),
                                    "std": statistics.stdev(paired) if len(paired) > 1 else 0.0},
                    "kd_wins": sum(d > 0 for d in paired), "ties": sum(d == 0 for d in paired)})
    write_json(ctx.run.stage("ablation", "ablation.json"), summary)
    console.print(f"{metric}: teacher {teacher_metric:.4f} | baseline {summary['baseline']['mean']:.4f} ± "
                  f"{summary['baseline']['std']:.4f} | KD {summary['kd']['mean']:.4f} ± {summary['kd']['std']:.4f} | "
                  f"gain {gain:+.4f} ({'larger' if summary['significant'] else 'NOT larger'} than the seed spread "
                  f"{spread:.4f}); paired per seed: {summary['paired_gain']['mean']:+.4f} ± "
                  f"{summary['paired_gain']['std']:.4f}, KD better on {summary['kd_wins']}/{seeds} seeds"
                  f"{', tied on ' + str(summary['ties']) if summary['ties'] else ''}")
    return summary
