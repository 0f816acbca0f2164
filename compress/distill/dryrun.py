"""`--dry-run`: validate the recipe, build both models, probe shapes and KD adapters; no training."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from compress.core.progress import console, count_text

if TYPE_CHECKING:
    from compress.context import Context


def dry_run(ctx: Context) -> dict[str, object]:
    """Check every path the run will read, build both models (with their checkpoints), probe shapes and
    KD adapters with a fake batch, and warn on what is wrong before training; nothing is trained.

    Raises:
        KdtoolError: a checkpoint, data root, label folder or manifest the run needs is missing or
            unreadable (all such problems are listed in one line).
    """
    from compress.core.errors import KdtoolError
    from compress.distill.objective import KDObjective
    from compress.models.build import build_model, check_model_io, count_params

    r = ctx.recipe
    problems = missing_inputs(r, ctx.task)
    if problems:
        raise KdtoolError(f"dry run: {len(problems)} problem(s): " + "; ".join(problems),
                          "fix them and run --dry-run again; nothing was trained or written")
    teacher = build_model(r.teacher, ctx.task.num_outputs, r.data, "teacher")
    student = build_model(r.student, ctx.task.num_outputs, r.data, "student")
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
    summary = {"teacher": f"{teacher.arch} {count_text(count_params(teacher.module))} params, input "
                          f"{tuple(teacher.preprocess(raw).shape)} → {tuple(t_out.shape)}",
               "student": f"{student.arch} {count_text(count_params(student.module))} params, input "
                          f"{tuple(student.preprocess(raw).shape)} → {tuple(s_out.shape)}",
               "loss terms": ", ".join(f"{k}={float(v):.4f}" for k, v in terms.items()),
               "adapters": f"{sum(p.numel() for p in objective.parameters())} params"}
    from compress.distill.sanity import gflops, size_warning

    cost = [(count_params(m.module), gflops(m.module, m.preprocess(raw[:1]))) for m in (teacher, student)]
    warning = size_warning(*cost)
    if warning:
        summary["warning"] = warning
    for k, v in summary.items():
        console.print(f"  {k}: {v}")
    warnings = sanity_warnings(r, count_params(teacher.module), count_params(student.module))
    for w in warnings:
        console.print(f"[yellow]warning:[/] {w}")
    summary["warnings"] = warnings
    console.print("[green]dry run ok[/]: recipe valid, checkpoints and data found, models built, shapes and "
                  "adapters probed" + (f" ({len(warnings)} warning(s) above)" if warnings else ""))
    return summary


FILE_SOURCES = {"imagefolder": "image", "audiofolder": "audio", "csv": None}


def missing_inputs(r, task) -> list[str]:
    """Every checkpoint, data root, label folder and manifest the run reads that is missing or bad."""
    from compress.core.errors import KdtoolError

    problems = []
    for role, cfg in (("teacher", r.teacher), ("student", r.student)):
        if role == "teacher" and cfg.self_distill:
            continue
        if cfg.checkpoint is not None and not Path(cfg.checkpoint).is_file():
            problems.append(f"{role}.checkpoint {cfg.checkpoint} does not exist")
        elif cfg.checkpoint is None and cfg.source != "timm":
            problems.append(f"{role}.checkpoint is required for source {cfg.source}")
    if r.data.source not in FILE_SOURCES:
        return problems
    if r.data.root is None:
        return [*problems, f"data.source {r.data.source} needs data.root"]
    classes = None
    for key in ("root", "val_root", "test_root"):
        path = getattr(r.data, key)
        if path is None:
            continue
        try:
            classes = _check_data_path(Path(path), f"data.{key}", r.data.source, task, classes)
        except KdtoolError as e:
            problems.append(e.message)
    return problems


def _check_data_path(path: Path, key: str, source: str, task, classes):
    """A folder of class folders (each non-empty) or a CSV manifest whose files all exist."""
    from compress.core.errors import KdtoolError
    from compress.data.files import list_class_folders, read_manifest

    if not path.exists():
        raise KdtoolError(f"{key} {path} does not exist")
    if source == "csv":
        paths, _ = read_manifest(path, task, key)
        absent = [p for p in paths if not Path(p).is_file()]
        if absent:
            raise KdtoolError(f"{key} {path}: {len(absent)} of {len(paths)} listed files do not exist "
                              f"(first: {absent[0]})")
        return classes
    _, _, names = list_class_folders(path, task, FILE_SOURCES[source], key, classes)
    return classes or names


def sanity_warnings(r, teacher_params: int, student_params: int) -> list[str]:
    """What can be known to be wrong before training (the run would still go ahead)."""
    warnings = []
    if not r.teacher.self_distill and student_params >= teacher_params:
        warnings.append(f"the student ({r.student.arch}, {student_params / 1e6:.2f} M params) is no smaller than "
                        f"its teacher ({r.teacher.arch}, {teacher_params / 1e6:.2f} M): nothing is compressed")
    if r.distill.alpha == 1.0 and not r.distill.terms:
        warnings.append("distill.alpha is 1.0 and there are no distill.terms: stage 2 learns from the labels "
                        "only, the teacher is not used")
    if r.teacher.checkpoint is not None and r.teacher.train is not None:
        warnings.append(f"teacher.train is not used: teacher.checkpoint {r.teacher.checkpoint} is the teacher")
    return warnings


def _fake_targets(task, n: int) -> torch.Tensor:
    if task.kind in ("multiclass",) or (task.kind == "binary"):
        return torch.zeros(n, dtype=torch.long)
    if task.kind == "multilabel":
        return torch.zeros(n, task.num_outputs)
    return torch.zeros(n, task.num_outputs)
