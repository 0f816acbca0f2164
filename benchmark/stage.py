"""`kdtool benchmark`: measure every model and artifact, write the report card, apply CI gates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.measure import ModelEntry, Scoring
from benchmark.report.card import Report
from compress.context import Context
from compress.core.atomic import read_json, remove_orphans
from compress.core.errors import KdtoolError
from compress.core.progress import console
from compress.core.runfolder import KD_STUDENT, PRUNED, TRAINING_STAGES, is_finished
from compress.data.loader import example_batch, make_loader
from export.stage import artifacts_of
from export.targets import TARGETS


def ensure_ready(ctx) -> None:
    """The benchmark needs the distilled student; name the missing stage otherwise."""
    if not is_finished(ctx.run.stage(KD_STUDENT)):
        raise KdtoolError(f"{ctx.run.stage('student_kd')} has no distilled student",
                          f"run `{ctx.command('distill')}` (or `{ctx.command('run')}`) first")
    if not ctx.run.stage(ctx.final_student, "meta.json").exists():
        raise KdtoolError(f"{ctx.run.stage(ctx.final_student)} has no pruned student",
                          f"run `{ctx.command('prune')}` (or `{ctx.command('run')}`) first")


def teacher_notes(ctx) -> list[str]:
    """The card's note on where the teacher came from (a checkpoint, trained here, the baseline)."""
    meta = ctx.run.stage("teacher", "meta.json")
    origin = read_json(meta).get("origin") if meta.exists() else None
    return [f"teacher: {origin}."] if origin else []


def pruning_notes(ctx: Context) -> list[str]:
    """The card's note on what pruning reached (the pruned student's row carries the same facts)."""
    meta = ctx.run.stage(PRUNED, "meta.json")
    p = read_json(meta).get("pruning") if ctx.recipe.prune is not None and meta.exists() else None
    if not p:
        return []
    asked = f"ratio {p['ratio']}" if p.get("ratio") is not None else next(
        f"{k} {p[k]}" for k in ("max_params", "max_gflops", "max_latency_ms") if k in p)
    return [f"student_pruned: {p['channels_removed']:.0%} of channels, {p['params_removed']:.0%} of params and "
            f"{p['gflops_removed'] or 0:.0%} of GFLOPs removed ({asked}; {p['importance']} importance, {p['scope']}, "
            f"{p['steps']} step(s), recovery {p['recover']}); quantized and exported rows are made from it."]


def run_benchmark(ctx: Context, baseline: Path | None = None, max_regression: float | None = None,
                  min_retention: float | None = None, force: bool = False, wide: bool = False) -> Report:
    """`kdtool benchmark`: measure every model and artifact, write the report card, apply CI gates.

    The run folder's models, quantized models and artifacts become typed values (`ModelEntry`,
    `Scoring`, `Artifact`) and go through `benchmark.api.make_card`, as `benchmark(...)` from Python does.
    The terminal shows the compact card sized to its width (`wide`: every column)."""
    from benchmark.api import make_card
    from benchmark.gates import enforce_gates
    from benchmark.report.card import load_report
    from benchmark.report.console import print_card
    from benchmark.report.render import write_report

    ensure_ready(ctx)
    remove_orphans(ctx.run.report)  # temporaries of a report write that was killed
    r = ctx.recipe
    split, _ = ctx.scored_split  # the checkpoints were chosen on validation; the card scores `split`
    models = stage_models(ctx)
    artifacts = artifacts_of(ctx)
    targets = list(r.export.targets)  # and every target exported on its own (`kdtool export --target ios`)
    targets += sorted({a.target for a in artifacts if a.status == "ok" and a.target in TARGETS} - set(targets))
    teacher_warnings = read_json(ctx.run.stage("teacher", "meta.json")).get("warnings") or []
    report = make_card(models, sorted(p.parent for p in ctx.run.stage("quantized").glob("*/*/meta.json")
                              if is_finished(p.parent)),
                       artifacts, run_scoring(ctx), r.benchmark, targets, r.name, student=models[-1],
                       root=ctx.run.root, recipe_sha256=ctx.recipe_sha, rescore_quantized=split == "test",
                       notes=[*_split_notes(ctx), *teacher_notes(ctx), *pruning_notes(ctx), *teacher_warnings])
    report = report.model_copy(update={"training": training_provenance(ctx)})
    paths = write_report(report, ctx.run.report)
    print_card(report, console, wide=wide)
    console.print(f"report: {paths['md']}  {paths['html']}")
    base = load_report(baseline) if baseline else None
    enforce_gates(report, base, max_regression, min_retention)
    return report


def run_scoring(ctx: Context) -> Scoring:
    """The recipe's scored split (test when it has one, else validation) as a `Scoring`; latency inputs
    are the first 32 validation samples."""
    split, scored = ctx.scored_split
    return Scoring(batches=lambda size: make_loader(scored, size, shuffle=False, seed=0), task=ctx.task,
                   raw=example_batch(ctx.datasets[1], 32), name=split)


def stage_models(ctx: Context) -> list[ModelEntry]:
    """teacher, student_baseline, student_kd (and student_pruned when the recipe prunes) from the run folder;
    on the validation split their stored metrics."""
    split = ctx.scored_split[0]
    entries = []
    for stage in (*TRAINING_STAGES, *([PRUNED] if ctx.recipe.prune is not None else [])):
        built = ctx.load(stage)
        meta = read_json(ctx.run.stage(stage, "meta.json"))
        stored = split == "validation"
        entries.append(ModelEntry(stage, stage, built.module, built.preprocess,
                                  ctx.run.stage(stage, "best.safetensors"),
                                  metrics=meta["metrics"] if stored else None,
                                  metric_notes=(meta.get("metric_notes") or {}) if stored else {},
                                  pruning=meta.get("pruning")))
    return entries


def training_provenance(ctx) -> dict[str, Any]:
    """What each trained stage ran with (commit, versions, threads, ...), from its meta.json."""
    return {stage: read_json(ctx.run.stage(stage, "meta.json")).get("provenance")
            for stage in TRAINING_STAGES}


def _split_notes(ctx) -> list[str]:
    """The card's note naming the split its metrics come from."""
    split, scored = ctx.scored_split
    if split == "validation":
        return [f"metrics: validation split ({len(scored)} samples), the split the best checkpoints were chosen "
                "on; add data.test_root or data.test_fraction for held-out scoring."]
    d = ctx.recipe.data
    source = f"data.test_root {d.test_root}" if d.test_root is not None else f"data.test_fraction {d.test_fraction}"
    return [f"metrics: held-out test split ({source}, {len(scored)} samples); the best checkpoints were chosen "
            "on validation."]
