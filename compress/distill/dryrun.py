"""`--dry-run`: validate the recipe, build both models, probe shapes and KD adapters; no training."""

from __future__ import annotations

from pathlib import Path

import torch

from compress.core.progress import console, count_text


def dry_run(ctx) -> dict[str, object]:
    """Validate the recipe, build both models (random weights where no checkpoint exists), probe shapes
    and KD adapters with a fake batch; no training, no data read."""
    from compress.distill.objective import KDObjective
    from compress.models.build import build_model, check_model_io, count_params

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
    summary = {"teacher": f"{teacher.arch} {count_text(count_params(teacher.module))} params, input "
                          f"{tuple(teacher.preprocess(raw).shape)} → {tuple(t_out.shape)}",
               "student": f"{student.arch} {count_text(count_params(student.module))} params, input "
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
