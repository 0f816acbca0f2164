"""`kdtool quantize`: INT8 versions of the distilled student, read from and written to the run folder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from compress.context import Context
from compress.core.atomic import read_json
from compress.core.progress import console
from compress.core.runfolder import finish_stage, inputs_hash, prepare_stage
from compress.core.tasks import lower_is_better
from compress.data.loader import example_batch, make_loader
from compress.distill.objective import KDObjective
from compress.models.build import BuiltModel
from recipes.schema import QuantizeConfig, Recipe

BACKENDS = {"dynamic": ("torch", "onnx"), "static": ("executorch", "onnx"), "qat": ("executorch",)}
"""Quantization backends made per recipe mode (CoreML static is added for the ios target)."""


def quant_backends(recipe: Recipe, mode: str) -> tuple[str, ...]:
    """Backends to quantize for, given the recipe's export targets."""
    if recipe.quantize.backends and mode in recipe.quantize.backends:
        return tuple(recipe.quantize.backends[mode])
    backends = BACKENDS[mode]
    if mode == "static" and "ios" in recipe.export.targets:
        backends = (*backends, "coreml")
    return backends


def run_quantize(ctx: Context, modes: list[str] | None = None, force: bool = False) -> list[dict[str, Any]]:
    """`kdtool quantize`: INT8 versions of the distilled student, each evaluated on validation."""
    from compress.models.deploy import deploy_form
    from compress.quant.quantize import evaluate_quantized, make_config, quantize

    r = ctx.recipe
    modes = modes or list(r.quantize.modes)
    student = ctx.load(ctx.final_student)  # the pruned student when the recipe prunes
    student.module, fused = deploy_form(student.module)  # int8 of the form that ships (re-parameterised)
    train_ds, val_ds = ctx.datasets
    kd_hash = ctx.output_hash(ctx.final_student)
    results = []
    for mode in modes:
        for backend in quant_backends(r, mode):
            folder = ctx.run.stage("quantized", mode, backend)
            expected = inputs_hash(_mode_settings(r.quantize, mode, backend), r.distill if mode == "qat" else None,
                                   mode, backend, kd_hash)
            if prepare_stage(folder, expected, force) == "skip":
                console.print(f"[dim]quantize {mode}/{backend}: reused {folder}[/]")
                results.append(read_json(folder / "meta.json"))
                continue
            start = time.perf_counter()
            settings: dict[str, Any] = {"backend": backend}
            if mode == "static":
                settings.update(_mode_settings(r.quantize, mode, backend))
            if mode == "qat":
                settings.update(epochs=r.quantize.qat.epochs, lr=r.quantize.qat.lr,
                                weight_decay=r.quantize.qat.weight_decay, train=r.quantize.qat)
            teacher = objective = None
            if mode == "qat":
                teacher = ctx.load("teacher")
                objective = _qat_objective(ctx, student, teacher)
            batch = (r.quantize.qat.batch_size if mode == "qat" else None) or r.data.batch_size
            loader = make_loader(train_ds, batch, shuffle=mode == "qat", seed=r.quantize.qat.seed)
            val_loader = make_loader(val_ds, 256, shuffle=False, seed=0)
            if mode == "static":  # accuracy-aware: keeps the most sensitive layers float below the floor
                qm, evaluation = _static_with_floor(student, make_config(mode, **settings), loader, val_loader,
                                                    folder, r.quantize.qat.seed, ctx.task)
            else:
                qm = quantize(student.module, make_config(mode, **settings), calibration=loader,
                              preprocess=student.preprocess, out=folder, seed=r.quantize.qat.seed,
                              teacher=teacher.module if teacher else None,
                              teacher_preprocess=teacher.preprocess if teacher else None, task=ctx.task,
                              objective=objective)
                evaluation = evaluate_quantized(qm, student.module, val_loader, student.preprocess, ctx.task)
            seconds = time.perf_counter() - start
            finish_stage(folder, expected, {"evaluation": evaluation, "seconds": round(seconds, 2),
                                            "reparameterized_blocks": fused})
            metric = ctx.task.primary_metric
            value = (evaluation.get("metrics") or {}).get(metric)
            console.print(f"quantize {mode}/{backend}: {metric}="
                          f"{'n/a (' + evaluation['status'] + ')' if value is None else f'{value:.4f}'} "
                          f"size {evaluation.get('size_mb') or 0:.2f} MB ({seconds:.1f} s)")
            results.append(read_json(folder / "meta.json"))
    return results


def _static_with_floor(student, config, calibration, validation, folder: Path, seed: int, task):
    """Static PTQ through `quantize_with_floor` (same inputs `quantize` would build)."""
    from compress.quant.accuracy import quantize_with_floor
    from compress.quant.configs import QuantInputs

    raw = next(iter(calibration))[0]
    qi = QuantInputs(example=student.preprocess(raw[:2]), calibration=calibration, preprocess=student.preprocess,
                     out=folder, seed=seed)
    return quantize_with_floor(student.module, config, qi, validation, task)


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
        if not (folder / "meta.json").exists():
            continue
        metrics = (read_json(folder / "meta.json").get("evaluation") or {}).get("metrics") or {}
        value = metrics.get(ctx.task.primary_metric)
        metric = ctx.task.primary_metric
        sign = -1.0 if lower_is_better(metric) else 1.0
        score = float("-inf") if value is None else sign * float(value)
        if best is None or score > best[0]:
            best = (score, folder, mode)
    return (best[1], best[2]) if best else (None, None)
