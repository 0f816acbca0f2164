"""Quantization-aware distillation: PT2E QAT fine-tuning of the student against its teacher.

`prepare_qat_pt2e` inserts fake-quantizers (XNNPACK QAT config) → a few epochs with the KD loss →
`move_exported_model_to_eval` → `convert_pt2e` → int8 `.pt2`.

The loss is the distillation stage's own `KDObjective` when one is given, every term included:
forward hooks cannot find layers in an exported graph, so the student is exported through a wrapper
that returns `(output, *features)` (one graph output per layer the terms use). The fake-quantized
features feed fitnet/attention terms; the teacher's come from `objective.teacher_forward`; the
objective's adapters train with the student and stay outside the graph. After conversion the feature
outputs and the nodes only they used are cut, so the saved model has one output, as without terms.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from pydantic import ValidationError
from torch import Tensor, nn

from compress.core import determinism
from compress.core.errors import KdtoolError
from compress.core.progress import epoch_progress
from compress.distill.hooks import capture
from compress.distill.schedules import kd_weights
from compress.distill.trainer import LossSums, TrainStep
from compress.quant.common import export_graph, kept_float_modules, program_size_mb
from compress.quant.configs import Int8QATConfig, LossFn, QuantInputs, QuantizedModel
from recipes.schema import QATTrainConfig, TrainConfig

if TYPE_CHECKING:
    from compress.distill.objective import KDObjective


def quantize_qat(model: nn.Module, config: Int8QATConfig, qi: QuantInputs) -> QuantizedModel:
    """`quantize(model, Int8QATConfig(...), ...)` entry: unpacks `qi` into `qat_distill`."""
    if qi.calibration is None or qi.task is None:
        raise KdtoolError("quantize qat: needs a training loader and a task",
                          "pass calibration=<train loader> and task=<Task>")
    return qat_distill(model, qi.teacher, qi.calibration, qi.preprocess, qi.teacher_preprocess, qi.task,
                       epochs=config.epochs, lr=config.lr, loss_fn=qi.loss_fn, example=qi.example,
                       config=config, out=qi.out, seed=qi.seed, objective=qi.objective)


class FeatureOutputs(nn.Module):
    """Runs a model under `capture` and returns `(output, *features)`, one feature per layer, in order.

    Args:
        model: the student (its layers are found by name, as in distillation).
        layers: module paths the KD terms read.
    """

    def __init__(self, model: nn.Module, layers: list[str]) -> None:
        super().__init__()
        self.model = model
        self.layers = list(layers)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        with capture(self.model, self.layers, "student") as feats:
            out = self.model(x)
        return (out, *(feats[name] for name in self.layers))


def first_output_only(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A copy of a converted graph that returns only its first output (the model's own output).

    Nodes that only fed the other outputs (feature q/dq pairs) are removed with them, so the result
    exports to the same single-output program a model converted without features does.
    """
    graph = torch.fx.Graph()
    outputs = graph.graph_copy(gm.graph, {})
    graph.output(outputs[0])
    one = torch.fx.GraphModule(gm, graph)
    one.graph.eliminate_dead_code()
    one.recompile()
    return one


def qat_distill(student: nn.Module, teacher: nn.Module | None, train_loader: Iterable,
                student_preprocess: Callable | None, teacher_preprocess: Callable | None, task,
                epochs: int = 2, lr: float = 1e-4, loss_fn: LossFn | None = None,
                example: torch.Tensor | None = None, config: Int8QATConfig | None = None,
                out=None, seed: int = 0, objective: KDObjective | None = None) -> QuantizedModel:
    """Fine-tune `student` with fake quantization (optionally distilling from `teacher`) and convert to int8.

    Args:
        student: the trained fp32 student (not modified; a copy is exported and trained).
        teacher: frozen teacher, or None for QAT on hard labels only. With `objective`: None or
            `objective.teacher`.
        train_loader: yields (raw, target, index) batches.
        student_preprocess: raw batch → student input (None: identity).
        teacher_preprocess: raw batch → teacher input (None: the student's).
        task: a `compress.core.tasks.Task` (its hard loss is used without `loss_fn` and `objective`).
        epochs: QAT epochs (overrides `config.epochs`).
        lr: learning rate (overrides `config.lr`; the optimizer is `config.train.optimizer`, default AdamW).
        loss_fn: `loss_fn(student_out, teacher_out, targets) -> scalar` (teacher_out None without teacher).
        example: one preprocessed input batch (N >= 2) to export with; default: the first training batch.
        config: the rest of the QAT settings (per-channel, weight decay, batch-norm freeze epoch).
        out: folder for `model.pt2` and meta.json (None: keep in memory).
        seed: seeds the fine-tuning.
        objective: the distillation loss itself (instead of `loss_fn`): every term, feature and
            attention terms on the exported student's layers included, with `objective.distill`'s
            alpha and temperature; its adapters train along and are never exported.

    Returns:
        The converted int8 model (backend "executorch": the `.pt2` ExecuTorch lowers); its meta holds
        `qat_history`, the mean of each loss term per epoch.

    Raises:
        KdtoolError: epochs < 1, both `loss_fn` and `objective` given, or a teacher that is not the
            objective's. NonFiniteLossError: the loss became NaN/Inf.
    """
    from torchao.quantization.pt2e import move_exported_model_to_eval

    from compress.quant.pt2e import convert, finish_pt2e

    if epochs < 1:
        raise KdtoolError(f"quantize.qat.epochs is {epochs}", "set it to 1 or more")
    teacher = _loss_teacher(teacher, loss_fn, objective)  # and sets the teacher to eval, the adapters to train
    per_epoch = _length(train_loader)
    config = config or Int8QATConfig()
    train_cfg = qat_train_config(config, epochs, lr, per_epoch)
    determinism.configure(train_cfg.threads)  # quantize.qat.threads, as every training: same weights anywhere
    torch.manual_seed(seed)
    pre_s = student_preprocess or (lambda x: x)
    pre_t = teacher_preprocess or pre_s
    example = example if example is not None else pre_s(next(iter(train_loader))[0][:2])
    layers = objective.student_layers if objective is not None else []
    fp32_mb, kept = program_size_mb(student.eval(), example, "qat"), kept_float_modules(student)
    prepared = _prepared(student, example, layers, config, kept)
    step = TrainStep(prepared, objective, train_cfg, epochs * (per_epoch or 1), torch.device("cpu"),
                     "lower quantize.qat.lr, or set quantize.qat.nan_policy: skip", per_epoch or 1)
    alpha, temperature = kd_weights(objective.distill if objective is not None else None, 1)

    def loss_terms(raw: Tensor, targets: Tensor) -> dict[str, Tensor]:
        with step.autocast():
            outputs = prepared(pre_s(raw))
        s_out, *feats = outputs if layers else (outputs,)
        if objective is not None:
            t_out, t_feats = objective.teacher_forward(pre_t(raw)) if teacher is not None else (None, {})
            return objective(s_out, dict(zip(layers, feats, strict=True)), t_out, t_feats, targets,
                             alpha=alpha, temperature=temperature)
        if loss_fn is None:
            return {"total": task.hard_loss(s_out, targets)}
        with torch.no_grad():
            t_out = teacher(pre_t(raw)) if teacher is not None else None
        return {"total": loss_fn(s_out, t_out, targets)}

    steps, history = _qat_epochs(prepared, step, loss_terms, train_loader, epochs, config.freeze_bn_epoch, per_epoch)
    move_exported_model_to_eval(prepared)
    converted = convert(prepared, qat=True)
    if layers:
        converted = first_output_only(converted)
    return finish_pt2e(converted, QuantInputs(example=example, out=out, seed=seed), config, None,
                       "mode static (post-training)", fp32_mb, _notes(steps, epochs, teacher, objective, layers, kept),
                       qat_history=history)


def _prepared(student: nn.Module, example: Tensor, layers: list[str], config: Int8QATConfig,
              kept: tuple[str, ...]) -> torch.fx.GraphModule:
    """A copy of `student` (with its feature outputs when KD reads `layers`) exported and prepared for QAT.

    `kept` (modules declaring keep_float_in_int8) stay float here too: fake-quantized, the log-mel
    front end's DFT kernel's all-zero rows got a zero scale and the first forward pass was NaN.
    """
    from compress.quant.pt2e import prepare_qat, xnnpack_quantizer

    trainable = copy.deepcopy(student).eval()
    graph = export_graph(FeatureOutputs(trainable, layers) if layers else trainable, example, "qat").module()
    in_graph = tuple(f"model.{name}" for name in kept) if layers else kept  # FeatureOutputs wraps it as .model
    return prepare_qat(graph, xnnpack_quantizer(config.per_channel, is_qat=True, float_modules=in_graph))


def _notes(steps: int, epochs: int, teacher: nn.Module | None, objective: KDObjective | None,
           layers: list[str], kept: tuple[str, ...] = ()) -> list[str]:
    """The QAT model's provenance notes: steps, what it learned from, the KD weights, feature layers, float modules."""
    notes = [f"{steps} QAT steps over {epochs} epoch(s)",
             "distilled from the teacher" if teacher is not None else "hard labels only (no teacher)"]
    if objective is not None and objective.distill is not None:
        notes.append(f"KD loss at alpha {objective.distill.alpha:g}, temperature {objective.distill.temperature:g}")
    if layers:
        notes.append(f"feature KD on student layers {', '.join(layers)} (feature outputs cut after convert)")
    if kept:
        notes.append(f"kept in float: {', '.join(kept)}")
    return notes


def _loss_teacher(teacher: nn.Module | None, loss_fn: LossFn | None, objective: KDObjective | None) -> nn.Module | None:
    """The teacher QAT distills from: the objective's own when one is given (a different one is refused).

    Puts the teacher in eval mode and the objective (its adapters' batch norms) in train mode.
    """
    if objective is None:
        if teacher is not None:
            teacher.eval()
        return teacher
    if loss_fn is not None:
        raise KdtoolError("qat_distill: give loss_fn or objective, not both",
                          "the objective already is the loss; drop loss_fn")
    if teacher is not None and teacher is not objective.teacher:
        raise KdtoolError("qat_distill: `teacher` is not the objective's teacher",
                          "build the KDObjective with the teacher you distill from, or pass teacher=None")
    if objective.teacher is not None:
        objective.teacher.eval()
    objective.train()  # adapter batch norms learn; the teacher stays in eval (teacher_forward)
    return objective.teacher


def _qat_epochs(prepared: nn.Module, step: TrainStep, loss_terms: Callable[[Tensor, Tensor], dict[str, Tensor]],
                train_loader: Iterable, epochs: int, freeze_bn_epoch: int | None,
                per_epoch: int | None) -> tuple[int, list[dict[str, float]]]:
    """The QAT epochs through the shared `TrainStep`; returns (optimizer steps, per-epoch mean loss terms)."""
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

    steps, history = 0, []
    with epoch_progress("qat", epochs, per_epoch) as bar:
        for epoch in range(epochs):
            move_exported_model_to_train(prepared)
            if freeze_bn_epoch is not None and epoch >= freeze_bn_epoch:
                move_exported_model_to_eval(prepared)  # frozen BN statistics; fake-quant still trains
            bar.start_epoch(epoch + 1)
            sums = LossSums()
            for raw, targets, *_ in train_loader:
                if len(raw) < 2:  # batch norm in training mode needs two samples
                    continue
                terms = step(lambda raw=raw, targets=targets: loss_terms(raw, targets),
                             f"quantize qat: non-finite loss at epoch {epoch + 1} step {steps + 1}", "", steps + 1)
                if terms is None:
                    continue
                steps += 1
                sums.add(terms, len(raw))
                bar.advance(sums.means())
            record = {"epoch": epoch + 1,
                      **{f"loss_{k}": round(v / max(sums.seen, 1), 6) for k, v in sums.sums.items()}}
            history.append(record)
            bar.log(f"  qat epoch {epoch + 1}/{epochs}: "
                    + " ".join(f"{k[5:]}={v:.4f}" for k, v in record.items() if k.startswith("loss_")))
    return steps, history


def qat_train_config(config: Int8QATConfig, epochs: int, lr: float, per_epoch: int | None = 1) -> TrainConfig:
    """The training settings QAT runs with: `config.train` (default AdamW at a constant lr, no clipping)
    with `epochs`, `lr` and `config.weight_decay` in place of its own.

    Raises:
        KdtoolError: a key QAT cannot honour, or a decaying scheduler over a loader without a length
            (`per_epoch` None: the number of steps is unknown).
    """
    base = config.train or TrainConfig(scheduler="constant")
    try:  # the keys QAT cannot honour (init, ema_decay, amp) are refused here as in a recipe
        QATTrainConfig.model_validate(base.model_dump())
    except ValidationError as e:
        raise KdtoolError(f"Int8QATConfig.train: {e.errors()[0]['msg'].removeprefix('Value error, ')}",
                          "leave the key out of QAT's training settings") from None
    if per_epoch is None and base.scheduler != "constant":
        raise KdtoolError(f"quantize.qat.scheduler is {base.scheduler!r} but the QAT loader has no length",
                          "pass a loader with len(), or set scheduler: constant")
    return base.model_copy(update={"epochs": epochs, "lr": lr, "weight_decay": config.weight_decay})


def _length(loader: Iterable) -> int | None:
    """Batches per epoch, or None for a loader without a length (the bar then shows no total)."""
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None
