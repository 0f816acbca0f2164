"""`kdtool quantize`: INT8 versions of the distilled student, read from and written to the run folder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from compress.context import Context
from compress.core.atomic import read_json
from compress.core.progress import console
from compress.core.runfolder import (
    begin_stage,
    finish_stage,
    inputs_hash,
    is_finished,
    lone_marker_removed,
    prepare_stage,
)
from compress.core.tasks import lower_is_better
from compress.data.loader import example_batch, make_loader
from compress.distill.objective import KDObjective
from compress.models.build import BuiltModel
from recipes.schema import QuantizeConfig, Recipe

BACKENDS = {"dynamic": ("torch",), "static": ("executorch",), "qat": ("executorch",)}
"""Model-level quantization backends made per recipe mode; the file formats' own int8 writers
(`compress.quant.formats.FILE_INT8`: ONNX Runtime on every run, CoreML for the ios target) follow."""


def quant_backends(recipe: Recipe, mode: str) -> tuple[str, ...]:
    """Backends to quantize for, given the recipe's export targets."""
    from compress.quant.formats import file_backends

    if recipe.quantize.backends and mode in recipe.quantize.backends:
        return tuple(recipe.quantize.backends[mode])
    return (*BACKENDS[mode], *file_backends(mode, recipe.export.targets))


def run_quantize(ctx: Context, modes: list[str] | None = None, force: bool = False) -> list[dict[str, Any]]:
    """`kdtool quantize`: INT8 versions of the distilled student, each evaluated on validation."""
    from compress.models.deploy import deploy_form

    r = ctx.recipe
    modes = modes or list(r.quantize.modes)
    student = ctx.load(ctx.final_student)  # the pruned student when the recipe prunes
    student.module, fused = deploy_form(student.module)  # int8 of the form that ships (re-parameterised)
    kd_hash = ctx.output_hash(ctx.final_student)
    results = []
    for mode in modes:
        for backend in quant_backends(r, mode):
            folder = ctx.run.stage("quantized", mode, backend)
            expected = inputs_hash(_mode_settings(r.quantize, mode, backend), r.distill if mode == "qat" else None,
                                   mode, backend, kd_hash)
            # a killed run's leftover (begin marker, no finished meta.json) is redone without --force
            if prepare_stage(folder, expected, force, redo_partial=True) == "skip":
                console.print(f"[dim]quantize {mode}/{backend}: reused {folder}[/]")
                results.append(read_json(folder / "meta.json"))
                continue
            begin_stage(folder, expected)
            with lone_marker_removed(folder):  # a mode that fails before writing anything leaves no trace
                _quantize_one(ctx, student, mode, backend, folder, expected, fused)
            results.append(read_json(folder / "meta.json"))
    return results


def _call_settings(quantize_cfg: QuantizeConfig, mode: str, backend: str) -> dict[str, Any]:
    """The mode's config fields a recipe sets (`compress.quantize(**settings)`)."""
    if mode == "static":
        return _mode_settings(quantize_cfg, mode, backend)
    if mode == "qat":
        q = quantize_cfg.qat
        return {"epochs": q.epochs, "lr": q.lr, "weight_decay": q.weight_decay, "train": q}
    return {}


def _quantize_one(ctx: Context, student: BuiltModel, mode: str, backend: str, folder: Path, expected: str,
                  fused: Any) -> None:
    """Quantize the student with one (mode, backend) through `compress.quantize`, and record the folder as finished."""
    from compress.quant.api import quantize

    r = ctx.recipe
    train_ds, val_ds = ctx.datasets
    start = time.perf_counter()
    teacher = ctx.load("teacher") if mode == "qat" else None
    batch = (r.quantize.qat.batch_size if mode == "qat" else None) or r.data.batch_size
    qm = quantize(student.module, make_loader(train_ds, batch, shuffle=mode == "qat", seed=r.quantize.qat.seed),
                  mode, backend, val_loader=make_loader(val_ds, 256, shuffle=False, seed=0), task=ctx.task,
                  out_dir=folder, preprocess=student.preprocess, seed=r.quantize.qat.seed,
                  teacher=teacher.module if teacher else None,
                  teacher_preprocess=teacher.preprocess if teacher else None,
                  objective=_qat_objective(ctx, student, teacher) if teacher else None,
                  **_call_settings(r.quantize, mode, backend))
    evaluation = qm.evaluation
    seconds = time.perf_counter() - start
    finish_stage(folder, expected, {"evaluation": evaluation, "seconds": round(seconds, 2),
                                    "reparameterized_blocks": fused})
    metric = ctx.task.primary_metric
    value = (evaluation.get("metrics") or {}).get(metric)
    console.print(f"quantize {mode}/{backend}: {metric}="
                  f"{'n/a (' + evaluation['status'] + ')' if value is None else f'{value:.4f}'} "
                  f"size {evaluation.get('size_mb') or 0:.2f} MB ({seconds:.1f} s)")




def _qat_objective(ctx: Context, student: BuiltModel, teacher: BuiltModel) -> KDObjective:
    """The distillation loss for QAT: every `distill` term, with the adapters student_kd trained.

    The adapters come from the student_kd training state (`last.safetensors`, keys `objective.*`);
    a missing or mismatched state leaves fresh adapters, with a logged warning. QAT goes on from
    where distillation ended, so an alpha or temperature schedule is held at its value of the
    last KD epoch (a linear 0.95 → 0.5 alpha trains QAT at 0.5, not at `distill.alpha`).
    """
    from compress.distill.checkpoint import load_objective_state
    from compress.distill.objective import KDObjective
    from compress.distill.schedules import kd_weights

    train_ds, _ = ctx.datasets
    raw = example_batch(train_ds)
    d = ctx.recipe.distill
    alpha, temperature = kd_weights(d, max(ctx.kd_train.epochs, 1))
    held = d.model_copy(update={"alpha": alpha, "temperature": temperature,
                                "alpha_schedule": None, "temperature_schedule": None})
    objective = KDObjective(ctx.task, held, student.module, teacher.module,
                            student.preprocess(raw), teacher.preprocess(raw))
    load_objective_state(objective, ctx.run.stage(ctx.final_student) / "last.safetensors")
    return objective


def _mode_settings(quantize_cfg: QuantizeConfig, mode: str, backend: str) -> dict[str, Any]:
    """The settings one quantization mode depends on: changing QAT's lr does not redo static PTQ."""
    if mode == "static":
        settings = {"calibration_samples": quantize_cfg.calibration_samples,
                    "min_retention": quantize_cfg.min_retention}
        if backend == "onnx" and quantize_cfg.onnx_activations:  # left out unset: older runs keep their hash
            settings["onnx_activations"] = quantize_cfg.onnx_activations
        if quantize_cfg.calibration_method:
            settings["calibration_method"] = quantize_cfg.calibration_method
        return settings
    if mode == "qat":
        return quantize_cfg.qat.model_dump(mode="json", exclude_none=True)
    return {}


def best_quantized(ctx: Context, backend: str, modes: tuple[str, ...]) -> tuple[Path | None, str | None]:
    """The quantized model of `backend` with the best validation metric among `modes` (first wins ties).

    QAT exists to recover what static PTQ loses, so when both ran the export takes whichever scored
    higher on the validation split (static on a tie: it needs no training to reproduce).
    """
    best: tuple[float, Path, str] | None = None
    for mode in modes:
        folder = ctx.run.stage("quantized", mode, backend)
        if not is_finished(folder):  # absent, or a killed run's leftover
            continue
        metrics = (read_json(folder / "meta.json").get("evaluation") or {}).get("metrics") or {}
        value = metrics.get(ctx.task.primary_metric)
        metric = ctx.task.primary_metric
        sign = -1.0 if lower_is_better(metric) else 1.0
        score = float("-inf") if value is None else sign * float(value)
        if best is None or score > best[0]:
            best = (score, folder, mode)
    return (best[1], best[2]) if best else (None, None)
