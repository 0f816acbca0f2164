"""Quantization-aware distillation: PT2E QAT fine-tuning of the student against its teacher.

`prepare_qat_pt2e` inserts fake-quantizers (XNNPACK QAT config) → a few epochs with the caller's KD
loss (hard loss without one) → `move_exported_model_to_eval` → `convert_pt2e` → int8 `.pt2`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import torch
from torch import nn

from compress.errors import KdtoolError, NonFiniteLossError
from compress.quant.common import export_graph, program_size_mb
from compress.quant.configs import Int8QATConfig, LossFn, QuantInputs, QuantizedModel


def quantize_qat(model: nn.Module, config: Int8QATConfig, qi: QuantInputs) -> QuantizedModel:
    """`quantize(model, Int8QATConfig(...), ...)` entry: unpacks `qi` into `qat_distill`."""
    if qi.calibration is None or qi.task is None:
        raise KdtoolError("quantize qat: needs a training loader and a task",
                          "pass calibration=<train loader> and task=<Task>")
    return qat_distill(model, qi.teacher, qi.calibration, qi.preprocess, qi.teacher_preprocess, qi.task,
                       epochs=config.epochs, lr=config.lr, loss_fn=qi.loss_fn, example=qi.example,
                       config=config, out=qi.out, seed=qi.seed)


def qat_distill(student: nn.Module, teacher: nn.Module | None, train_loader: Iterable,
                student_preprocess: Callable | None, teacher_preprocess: Callable | None, task,
                epochs: int = 2, lr: float = 1e-4, loss_fn: LossFn | None = None,
                example: torch.Tensor | None = None, config: Int8QATConfig | None = None,
                out=None, seed: int = 0) -> QuantizedModel:
    """Fine-tune `student` with fake quantization (optionally distilling from `teacher`) and convert to int8.

    Args:
        student: the trained fp32 student (not modified; a copy is exported and trained).
        teacher: frozen teacher, or None for QAT on hard labels only.
        train_loader: yields (raw, target, index) batches.
        student_preprocess: raw batch → student input (None: identity).
        teacher_preprocess: raw batch → teacher input (None: the student's).
        task: a `compress.tasks.Task` (its hard loss is used when `loss_fn` is None).
        epochs: QAT epochs (overrides `config.epochs`).
        lr: AdamW learning rate (overrides `config.lr`).
        loss_fn: `loss_fn(student_out, teacher_out, targets) -> scalar` (teacher_out None without teacher).
        example: one preprocessed input batch (N >= 2) to export with; default: the first training batch.
        config: the rest of the QAT settings (per-channel, weight decay, batch-norm freeze epoch).
        out: folder for `model.pt2` and meta.json (None: keep in memory).
        seed: seeds the fine-tuning.

    Returns:
        The converted int8 model (backend "executorch": the `.pt2` ExecuTorch lowers).
    """
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    from compress.quant.pt2e import finish_pt2e, xnnpack_quantizer

    config = config or Int8QATConfig()
    if epochs < 1:
        raise KdtoolError(f"quantize.qat.epochs is {epochs}", "set it to 1 or more")
    torch.manual_seed(seed)
    pre_s = student_preprocess or (lambda x: x)
    pre_t = teacher_preprocess or pre_s
    if example is None:
        example = pre_s(next(iter(train_loader))[0][:2])
    fp32_mb = program_size_mb(student.eval(), example, "qat")
    graph = export_graph(copy.deepcopy(student).eval(), example, "qat").module()
    prepared = prepare_qat_pt2e(graph, xnnpack_quantizer(config.per_channel, is_qat=True))
    if teacher is not None:
        teacher.eval()
    opt = torch.optim.AdamW(prepared.parameters(), lr=lr, weight_decay=config.weight_decay)
    steps = 0
    for epoch in range(epochs):
        move_exported_model_to_train(prepared)
        if config.freeze_bn_epoch is not None and epoch >= config.freeze_bn_epoch:
            move_exported_model_to_eval(prepared)  # frozen BN statistics; fake-quant still trains
        for raw, targets, *_ in train_loader:
            if len(raw) < 2:  # batch norm in training mode needs two samples
                continue
            student_out = prepared(pre_s(raw))
            teacher_out = None
            if teacher is not None:
                with torch.no_grad():
                    teacher_out = teacher(pre_t(raw))
            if loss_fn is not None:
                loss = loss_fn(student_out, teacher_out, targets)
            else:
                loss = task.hard_loss(student_out, targets)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"quantize qat: loss became {loss.item()} at epoch {epoch} "
                                         f"step {steps}", "lower quantize.qat.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
    move_exported_model_to_eval(prepared)
    qi = QuantInputs(example=example, out=out, seed=seed)
    notes = [f"{steps} QAT steps over {epochs} epoch(s)",
             "distilled from the teacher" if teacher is not None else "hard labels only (no teacher)"]
    converted = convert_pt2e(prepared)
    return finish_pt2e(converted, qi, config, None, "mode static (post-training)", fp32_mb, notes)
