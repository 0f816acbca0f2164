"""`kdtool run`, read top to bottom: distill → quantize → export → benchmark → report card.

Every stage can also run alone (`kdtool distill|quantize|export|benchmark`); each reads the
previous stage's outputs from the run folder and is skipped when its inputs did not change.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from compress.progress import console
from recipes.stages_post import run_benchmark, run_export, run_quantize

__all__ = ["dry_run", "registries", "run_all", "run_benchmark", "run_export", "run_quantize"]


def run_all(ctx, force: bool = False, resume: bool = False) -> dict[str, float]:
    """Chain every stage of the recipe and print the stage timings."""
    from compress.errors import ExportError
    from compress.stages import run_distill

    timings: dict[str, float] = {}
    start = time.perf_counter()
    for outcome in run_distill(ctx, "both", force=force, resume=resume):
        timings[outcome.name] = outcome.seconds
    export_failure: ExportError | None = None
    t0 = time.perf_counter()
    run_quantize(ctx, None, force=force)
    timings["quantize"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    try:
        run_export(ctx, force=force)
    except ExportError as e:  # the report card still shows every artifact, the failed ones with their reason
        export_failure = e
    timings["export"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_benchmark(ctx, force=force)
    timings["benchmark"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - start
    console.print("stage timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    if export_failure is not None:
        raise export_failure
    return timings


def dry_run(ctx) -> dict[str, object]:
    """Validate the recipe, build both models (random weights where no checkpoint exists), probe shapes
    and KD adapters with a fake batch; no training, no data read."""
    from compress.models import build_model, check_model_io, count_params
    from compress.objective import KDObjective

    r = ctx.recipe
    teacher_cfg = r.teacher if (r.teacher.checkpoint and Path(r.teacher.checkpoint).exists()) or \
        r.teacher.source != "timm" else r.teacher.model_copy(update={"checkpoint": None, "pretrained": False})
    student_cfg = r.student.model_copy(update={"checkpoint": None, "pretrained": False}) \
        if r.student.checkpoint and not Path(r.student.checkpoint).exists() else r.student
    teacher = build_model(teacher_cfg, ctx.task.num_outputs, r.data, "teacher")
    student = build_model(student_cfg, ctx.task.num_outputs, r.data, "student")
    if student.preprocess.kind == "audio":
        raw = torch.randn(2, student.preprocess.num_samples) * 0.1
    else:
        raw = torch.rand(2, r.data.channels, r.data.image_size, r.data.image_size)
    teacher.module.eval()
    student.module.eval()
    check_model_io(teacher, raw, ctx.task, "teacher")
    check_model_io(student, raw, ctx.task, "student")
    objective = KDObjective(ctx.task, r.distill, student.module, teacher.module, student.preprocess(raw),
                            teacher.preprocess(raw))
    with torch.no_grad():
        s_out, s_feats = objective.student_forward(student.preprocess(raw))
        t_out, t_feats = objective.teacher_forward(teacher.preprocess(raw))
        terms = objective(s_out, s_feats, t_out, t_feats, _fake_targets(ctx.task, 2),
                          alpha=r.distill.alpha, temperature=r.distill.temperature)
    summary = {"teacher": f"{teacher.arch} {count_params(teacher.module) / 1e6:.2f} M params, input "
                          f"{tuple(teacher.preprocess(raw).shape)} → {tuple(t_out.shape)}",
               "student": f"{student.arch} {count_params(student.module) / 1e6:.2f} M params, input "
                          f"{tuple(student.preprocess(raw).shape)} → {tuple(s_out.shape)}",
               "loss terms": ", ".join(f"{k}={float(v):.4f}" for k, v in terms.items()),
               "adapters": f"{sum(p.numel() for p in objective.parameters())} params"}
    for k, v in summary.items():
        console.print(f"  {k}: {v}")
    console.print("[green]dry run ok[/]: recipe valid, models built, shapes and adapters probed")
    return summary


def _fake_targets(task, n: int) -> torch.Tensor:
    if task.kind in ("multiclass",) or (task.kind == "binary"):
        return torch.zeros(n, dtype=torch.long)
    if task.kind == "multilabel":
        return torch.zeros(n, task.num_outputs)
    return torch.zeros(n, task.num_outputs)


def registries() -> dict:
    """Every registry `kdtool ls` can print."""
    import compress.audio  # noqa: F401
    import compress.data_files  # noqa: F401
    import compress.data_synthetic  # noqa: F401
    import compress.wrn  # noqa: F401
    from compress.data import DATA_SOURCES
    from compress.losses import LOSSES
    from compress.models import LOCAL_MODELS

    regs = {"losses": LOSSES, "models": LOCAL_MODELS, "sources": DATA_SOURCES}
    try:
        from compress.quantize import QUANT_MODES

        regs["quantizers"] = QUANT_MODES
    except ImportError:
        pass
    try:
        import export.all  # noqa: F401
        from export.registry import EXPORTERS

        regs["exporters"] = EXPORTERS
    except ImportError:
        pass
    try:
        import benchmark.runtimes.all  # noqa: F401
        from benchmark.runtimes import RUNTIMES

        regs["runtimes"] = RUNTIMES
    except ImportError:
        pass
    return regs
