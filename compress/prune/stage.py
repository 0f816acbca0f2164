"""`kdtool prune`: structured pruning of the distilled student, recovered with the teacher's guidance.

Reads `student_kd` (and the teacher for `recover: kd`) from the run folder and writes
`student_pruned/`: `best.safetensors` + `shapes.json` (the pruned architecture as data, so it loads
without the pruning code) + `meta.json`. With `steps: N` each step prunes its share and recovers in
`student_pruned/step<k>/` (resumable: finished steps are reused, a started one resumes its training).
Skipped when its inputs hash (recipe sections + upstream weights) is unchanged.
"""

from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from compress.context import Context
from compress.core.atomic import atomic_path, read_json, sha256_file, sha256_json, write_json
from compress.core.errors import KdtoolError
from compress.core.progress import console, count_text
from compress.core.runfolder import KD_STUDENT, PRUNED, finish_stage, prepare_stage
from compress.data.loader import example_batch, make_loader
from compress.distill.checkpoint import save_weights
from compress.distill.sanity import gflops
from compress.distill.stage import teacher_cache
from compress.distill.trainer import fit, predict
from compress.models.build import BuiltModel, count_params, load_weights
from compress.models.shapes import SHAPES_FILE, apply_shapes, architecture_changes
from compress.prune.budget import budget_of
from compress.prune.checks import check_forward, check_reload
from compress.prune.pruner import channel_count, layer_channels, prune_ratio, prune_to_budget

DONE = "done.json"
"""Written last in a step folder: the step's pruned and recovered weights are whole."""


def run_prune(ctx: Context, force: bool = False, resume: bool = False) -> dict[str, Any]:
    """`kdtool prune`: prune the distilled student to the recipe's ratio or budget, recover, save, verify.

    Returns:
        The stage's meta.json (metrics, params, GFLOPs, the ratios reached, parity of the saved model).

    Raises:
        KdtoolError: no prune section, an `ignore` name matching nothing, a budget that cannot be met, a
            model torch-pruning cannot trace (exit 2), or a pruned model that fails its checks (exit 4).
    """
    r = ctx.recipe
    if r.prune is None:
        raise KdtoolError("the recipe has no prune section", "add `prune: {ratio: 0.5}` or pass --set prune.ratio=0.5")
    folder = ctx.run.stage(PRUNED)
    expected = ctx.stage_hash(PRUNED)
    action = prepare_stage(folder, expected, force, resume)
    if action == "skip":
        console.print(f"[dim]{PRUNED}: reused {folder} (inputs unchanged)[/]")
        return read_json(folder / "meta.json")
    start = time.perf_counter()
    student = ctx.load(KD_STUDENT)
    unpruned = copy.deepcopy(student.module)
    train_ds, val_ds = ctx.datasets
    example = student.preprocess(example_batch(train_ds, 2))
    before = {"params": count_params(unpruned), "gflops": gflops(unpruned, example[:1]),
              "channels": channel_count(unpruned)}
    budget = budget_of(r.prune, example, r.benchmark.threads)
    if budget is not None:
        before["cost"] = budget[2](unpruned)
    teacher = ctx.load("teacher") if r.prune.recover == "kd" else None
    for k in range(1, r.prune.steps + 1):
        student = _step(ctx, student, unpruned, teacher, example, k, folder / f"step{k}", before,
                        resume=action == "resume")
    last = folder / f"step{r.prune.steps}"
    for name in ("best.safetensors", SHAPES_FILE):
        with atomic_path(folder / name) as tmp:
            shutil.copyfile(last / name, tmp)
    meta = _verify_and_describe(ctx, student, unpruned, example, before, time.perf_counter() - start)
    finish_stage(folder, expected, meta)
    return read_json(folder / "meta.json")


def _step(ctx: Context, student: BuiltModel, unpruned: torch.nn.Module, teacher: BuiltModel | None,
          example: torch.Tensor, k: int, out: Path, before: dict[str, float], resume: bool) -> BuiltModel:
    """Pruning step `k`: prune this step's share, check the forward, save the shapes, recover."""
    cfg = ctx.recipe.prune
    if resume and (out / DONE).exists():
        console.print(f"[dim]prune step {k}: reused {out}[/]")
        return ctx.load(PRUNED, folder=out)
    resumed = resume and (out / SHAPES_FILE).exists() and (out / "last.safetensors").exists()
    if resumed:  # shapes saved before training began: resize to them, fit restores the weights
        apply_shapes(student.module, read_json(out / SHAPES_FILE))
    else:  # bad input (ignore, budget, an untraceable model) fails here, before anything is written
        _prune_share(ctx, student, layer_channels(unpruned), example, k, before)
        check_forward(student.module, example, unpruned, f"prune step {k}")
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        write_json(out / SHAPES_FILE, architecture_changes(student.module, unpruned))
        if not (out.parent / "meta.json").exists():  # an unfinished run from here on: `--resume` continues it
            finish_stage(out.parent, ctx.stage_hash(PRUNED), {"stage": PRUNED}, complete=False)
    train = ctx.prune_train
    if cfg.recover != "none" and train.epochs > 0:
        train_ds, val_ds = ctx.datasets
        from compress.data.transfer import labeled_part

        if cfg.recover == "hard":  # hard labels only: the transfer set has none
            train_ds = labeled_part(train_ds)
        cached = teacher is not None and ctx.recipe.distill.cache.enabled
        cache = teacher_cache(ctx, teacher, train_ds, train) if cached else None
        student.module.train()
        result = fit(student, train_ds, val_ds, ctx.task, train, out, data_cfg=ctx.recipe.data, teacher=teacher,
                     distill=ctx.recipe.distill if teacher is not None else None, teacher_cache=cache, resume=resumed,
                     label=f"{PRUNED} {k}/{cfg.steps}")
        if result.interrupted:
            raise KdtoolError(f"{PRUNED} was interrupted (SIGTERM); its state is in {out}",
                              "continue with --resume", exit_code=128 + 15)
        load_weights(student.module, out / "best.safetensors", PRUNED)
    else:
        save_weights(student.module, out / "best.safetensors")
    write_json(out / DONE, {"params": count_params(student.module)})
    student.module.eval()
    return student


def _prune_share(ctx: Context, student: BuiltModel, original: dict[str, int], example: torch.Tensor, k: int,
                 before: dict[str, float]) -> None:
    """Prune step k of N: to k/N of the ratio, or to the budget interpolated k/N of the way; no layer
    below its floor against its `original` (unpruned) channels."""
    cfg = ctx.recipe.prune
    options = {"criterion": cfg.importance, "scope": cfg.scope, "ignore": cfg.ignore, "original": original,
               "prepare": _gradients(ctx, student) if cfg.importance == "taylor" else None}
    budget = budget_of(cfg, example, ctx.recipe.benchmark.threads)
    n = cfg.steps
    if budget is None:
        kept_before, kept_after = 1 - cfg.ratio * (k - 1) / n, 1 - cfg.ratio * k / n
        prune_ratio(student.module, example[:1], 1 - kept_after / kept_before, **options)
        return
    key, limit, measure = budget
    goal = limit if k == n else before["cost"] + (limit - before["cost"]) * k / n
    cost = prune_to_budget(student.module, example[:1], measure, goal, key, **options)
    console.print(f"prune step {k}/{n}: {key.removeprefix('max_')} {cost:.4g} (goal {goal:.4g})")


def _gradients(ctx: Context, student: BuiltModel):
    """Taylor importance's gradients: the hard loss summed over `calibration_batches` training batches."""
    train_ds, _ = ctx.datasets
    cfg = ctx.recipe.prune

    def prepare(model: torch.nn.Module) -> None:
        model.zero_grad(set_to_none=True)
        loader = make_loader(train_ds, ctx.recipe.data.batch_size, shuffle=True, seed=0)
        for i, (raw, targets, _) in enumerate(loader):
            if i >= cfg.calibration_batches:
                break
            ctx.task.hard_loss(model(student.preprocess(raw)), targets).backward()

    return prepare


def _verify_and_describe(ctx: Context, student: BuiltModel, unpruned: torch.nn.Module, example: torch.Tensor,
                         before: dict[str, float], seconds: float) -> dict[str, Any]:
    """Reload the saved model as every later stage will, check it computes what the pruned graph did,
    score it, and describe what pruning reached."""
    folder = ctx.run.stage(PRUNED)
    _, val_ds = ctx.datasets
    reloaded = ctx.load(PRUNED)
    parity = check_reload(student.module, reloaded.module, student.preprocess(example_batch(val_ds, 64)))
    outputs, targets = predict(reloaded.module, reloaded.preprocess, val_ds)
    metrics, notes = ctx.task.score(outputs, targets)
    unpruned_out, _ = predict(unpruned, student.preprocess, val_ds)
    after = {"params": count_params(reloaded.module), "gflops": gflops(reloaded.module, example[:1]),
             "channels": channel_count(reloaded.module)}
    cfg = ctx.recipe.prune
    pruning = {
        "ratio": cfg.ratio if not any((cfg.max_params, cfg.max_gflops, cfg.max_latency_ms)) else None,
        "channels_removed": round(1 - after["channels"] / before["channels"], 4),
        "params_removed": round(1 - after["params"] / before["params"], 4),
        "gflops_removed": round(1 - after["gflops"] / before["gflops"], 4) if before["gflops"] else None,
        "params_before": before["params"], "gflops_before": before["gflops"],
        **cfg.model_dump(mode="json", exclude={"train", "ratio"}, exclude_none=True),
        "agreement_with_unpruned": ctx.task.agreement(outputs, unpruned_out),
    }
    value = metrics[ctx.task.primary_metric]
    console.print(f"{PRUNED}: val {ctx.task.primary_metric}={'null' if value is None else f'{value:.4f}'} "
                  f"({count_text(after['params'])} params, {pruning['channels_removed']:.0%} of channels and "
                  f"{pruning['params_removed']:.0%} of params removed, {seconds:.1f} s)")
    return {"stage": PRUNED, "arch": reloaded.arch, "params": after["params"], "gflops": after["gflops"],
            "metrics": metrics, "metric_notes": notes, "primary_metric": ctx.task.primary_metric,
            "pruning": pruning, "parity": parity, "seconds": round(seconds, 2),
            "outputs_sha256": sha256_json([sha256_file(folder / "best.safetensors"),
                                           sha256_file(folder / SHAPES_FILE)]),
            "preprocess": reloaded.preprocess.to_dict(), "torch": torch.__version__}
