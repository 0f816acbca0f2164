"""ONE training loop for the teacher, the student baseline and distillation (the teacher is optional).

Read top to bottom: build the objective and optimizer → (resume) → for each epoch: schedules,
batches (augment → preprocess per model → forward → named loss terms → NaN guard → backward →
clip → step) → validate → checkpoint (last every epoch, best by the task's metric).

Exact resume: the batch order depends only on (seed, epoch), augmentation on (seed, epoch, step),
and the checkpoint holds model, adapters, optimizer, scheduler, RNG states and the position.
SIGTERM saves a mid-epoch checkpoint and stops cleanly; a SIGKILL loses at most one epoch.
"""

from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from compress.checkpoint import load_training_state, save_training_state, save_weights
from compress.data import augment_batch, make_loader
from compress.errors import KdtoolError, NonFiniteLossError
from compress.models import BuiltModel
from compress.progress import epoch_progress
from compress.tasks import Task


@dataclass
class FitResult:
    """What a training stage produced."""

    best_metric: float
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False


class _Interrupt:
    """Turns SIGTERM into a flag checked between steps (main thread only)."""

    def __init__(self) -> None:
        self.requested = False
        self._old = None

    def __enter__(self) -> _Interrupt:
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def _handle(self, *_: Any) -> None:
        self.requested = True

    def __exit__(self, *_: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def device_for_training() -> torch.device:
    """CUDA when present (rank-local under torchrun), else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def build_optimizer(params: list[nn.Parameter], cfg) -> torch.optim.Optimizer:
    """AdamW, SGD (nesterov, momentum 0.9), or SAM around AdamW."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sam":
        from compress.sam import SAM

        return SAM(params, torch.optim.AdamW, rho=cfg.sam_rho, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, total_steps: int):
    """One-cycle, cosine (with optional linear warm-up) or constant, stepped per batch."""
    base = getattr(optimizer, "base_optimizer", optimizer)
    total_steps = max(1, total_steps)
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(base, max_lr=cfg.lr, total_steps=total_steps, pct_start=0.25)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(base, T_max=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(base, lambda _: 1.0)


@torch.no_grad()
def predict(module: nn.Module, preprocess, ds: Dataset, batch_size: int = 256,
            device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a model over a dataset in order; returns (outputs, targets) on CPU."""
    device = device or torch.device("cpu")
    was_training = module.training
    module.eval()
    outs, targets = [], []
    for raw, target, _ in make_loader(ds, batch_size, shuffle=False, seed=0):
        out = module(preprocess(raw.to(device)))
        outs.append((out[0] if isinstance(out, tuple) else out).float().cpu())
        targets.append(target)
    module.train(was_training)
    return torch.cat(outs), torch.cat(targets)


def evaluate(module: nn.Module, preprocess, ds: Dataset, task: Task, batch_size: int = 256,
             device: torch.device | None = None) -> tuple[dict[str, float], torch.Tensor]:
    """Task metrics of a model on a dataset; also returns its outputs (for agreement)."""
    outputs, targets = predict(module, preprocess, ds, batch_size, device)
    return task.metrics(outputs, targets), outputs


def fit(student: BuiltModel, train_ds: Dataset, val_ds: Dataset, task: Task, cfg, out_dir: Path, *,
        data_cfg, teacher: BuiltModel | None = None, distill=None, teacher_cache=None,
        resume: bool = False, label: str = "train", batch_size: int | None = None) -> FitResult:
    """Train `student` (with a teacher: distill), checkpointing into `out_dir`.

    Args:
        student: the model being trained, with its preprocessing.
        train_ds, val_ds: datasets yielding (raw, target, index).
        task: the task kind (hard loss, metrics).
        cfg: a `TrainConfig` (epochs, lr, optimizer, scheduler, clipping, AMP, NaN policy, seed).
        out_dir: where `last.*` (resumable state) and `best.safetensors` go.
        data_cfg: the recipe's `DataConfig` (augmentation).
        teacher: frozen teacher; None trains on hard labels only (teacher training, baseline).
        distill: `DistillConfig` with temperature, alpha, schedules and extra KD terms.
        teacher_cache: a `TeacherCache` serving teacher outputs for recorded views (no teacher forward).
        resume: continue from `out_dir/last.*` exactly.
        label: the progress bar's title.
        batch_size: overrides cfg.batch_size / data_cfg.batch_size.

    Raises:
        NonFiniteLossError: a NaN/Inf loss under nan_policy=stop (exit code 3; last good checkpoint kept).
    """
    from compress.objective import KDObjective
    from compress.schedules import value_at

    torch.manual_seed(cfg.seed)
    device = device_for_training()
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = int(os.environ.get("RANK", "0"))
    out_dir.mkdir(parents=True, exist_ok=True)
    model = student.module.to(device)
    teacher_module = teacher.module.to(device) if teacher is not None else None
    if teacher_module is not None:
        teacher_module.eval()
        for p in teacher_module.parameters():
            p.requires_grad_(False)
    bs = batch_size or cfg.batch_size or data_cfg.batch_size
    raw_example = torch.stack([train_ds[i][0] for i in range(min(2, len(train_ds)))]).to(device)
    objective = KDObjective(task, distill if teacher is not None else None, model, teacher_module,
                            student.preprocess(raw_example),
                            teacher.preprocess(raw_example) if teacher is not None else None).to(device)
    if teacher_cache is not None and objective.needs_teacher_features:
        raise KdtoolError("distill.cache.enabled: feature/attention KD terms need the online teacher",
                          "set distill.cache.enabled: false, or keep only response KD terms")
    params = [p for p in model.parameters() if p.requires_grad] + list(objective.parameters())
    optimizer = build_optimizer(params, cfg)
    steps_per_epoch = math.ceil(len(train_ds) / bs)
    if distributed:
        steps_per_epoch = math.ceil(steps_per_epoch / int(os.environ["WORLD_SIZE"]))
    scheduler = build_scheduler(optimizer, cfg, cfg.epochs * steps_per_epoch)
    train_model: nn.Module = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    state = {"epoch": 0, "step": 0, "best_metric": None, "best_epoch": 0, "history": [], "bad_steps": 0}
    if resume:
        loaded = load_training_state(out_dir / "last", model, objective, optimizer, scheduler)
        if loaded is not None:
            state.update({k: loaded[k] for k in state if k in loaded})
    higher = task.primary_metric not in ("mae", "mse")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    scaler = torch.amp.GradScaler("cuda") if (cfg.amp == "fp16" and device.type == "cuda") else None
    start = time.perf_counter()

    def save_state(epoch: int, step: int) -> None:
        if rank == 0:
            save_training_state(out_dir / "last", model, objective, optimizer, scheduler,
                                {**state, "epoch": epoch, "step": step, "label": label})

    with _Interrupt() as interrupt, epoch_progress(label, cfg.epochs, steps_per_epoch, enabled=rank == 0) as bar:
        for epoch in range(state["epoch"], cfg.epochs):
            alpha = value_at(getattr(distill, "alpha_schedule", None), getattr(distill, "alpha", 1.0), epoch + 1)
            temperature = value_at(getattr(distill, "temperature_schedule", None),
                                   getattr(distill, "temperature", 1.0), epoch + 1)
            sampler = None
            if distributed:
                from torch.utils.data.distributed import DistributedSampler

                sampler = DistributedSampler(train_ds, shuffle=True, seed=cfg.seed)
                sampler.set_epoch(epoch)
            loader = make_loader(train_ds, bs, shuffle=True, seed=cfg.seed, epoch=epoch,
                                 num_workers=data_cfg.num_workers, sampler=sampler)
            model.train()
            sums: dict[str, float] = {}
            seen = 0
            bar.start_epoch(epoch + 1)
            for step, (raw, targets, index) in enumerate(loader):
                if step < state["step"]:  # resuming mid-epoch: replay the order, skip done steps
                    continue
                gen = torch.Generator().manual_seed(hash((cfg.seed, epoch, step)) % 2**31)
                raw, targets = raw.to(device), targets.to(device)
                t_out, t_feats = None, {}
                if teacher_cache is not None:
                    raw, t_out = teacher_cache.lookup(raw.cpu(), index, gen)
                    raw, t_out = raw.to(device), t_out.to(device).float()
                else:
                    raw, _ = augment_batch(raw, data_cfg, gen)
                    if teacher_module is not None:
                        t_out, t_feats = objective.teacher_forward(teacher.preprocess(raw))

                def closure() -> dict[str, torch.Tensor]:
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        s_out, s_feats = objective.student_forward(student.preprocess(raw), runner=train_model)
                    return objective(s_out, s_feats, t_out, t_feats, targets, alpha=alpha, temperature=temperature)

                terms = closure()
                loss = terms["total"]
                if not torch.isfinite(loss):
                    state["bad_steps"] += 1
                    where = f"{label}: non-finite loss at epoch {epoch + 1} step {step + 1} ({_fmt(terms)})"
                    if cfg.nan_policy == "stop" or state["bad_steps"] > cfg.max_bad_steps:
                        raise NonFiniteLossError(
                            where + f"; last good checkpoint kept in {out_dir}",
                            "pre-train the student first (stage baseline), lower distill.temperature or lr, "
                            "or set train.nan_policy: skip")
                    bar.log(f"[yellow]skipped[/] {where} ({state['bad_steps']}/{cfg.max_bad_steps})")
                    optimizer.zero_grad(set_to_none=True)
                    continue
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                if cfg.optimizer == "sam":
                    optimizer.first_step(zero_grad=True)
                    closure()["total"].backward()
                    optimizer.second_step(zero_grad=True)
                elif scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
                n = len(targets)
                seen += n
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
                bar.advance({k: v / seen for k, v in sums.items()})
                if interrupt.requested:
                    save_state(epoch, step + 1)
                    bar.log(f"SIGTERM: saved {out_dir / 'last.json'} at epoch {epoch + 1} step {step + 1}; "
                            "continue with --resume")
                    return FitResult(state["best_metric"] or float("nan"), state["best_epoch"], state["history"],
                                     time.perf_counter() - start, interrupted=True)
            state["step"] = 0
            metrics, outputs = evaluate(model, student.preprocess, val_ds, task, device=device)
            record = {"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0], "alpha": alpha,
                      "temperature": temperature, **{f"loss_{k}": v / max(seen, 1) for k, v in sums.items()},
                      **{f"val_{k}": v for k, v in metrics.items()}}
            if teacher_module is not None and teacher_cache is None:
                t_outputs, _ = predict(teacher_module, teacher.preprocess, val_ds, device=device)
                record["teacher_agreement"] = task.agreement(outputs, t_outputs)
            value = metrics[task.primary_metric]
            improved = state["best_metric"] is None or (value > state["best_metric"] if higher
                                                        else value < state["best_metric"])
            if improved and rank == 0:
                state["best_metric"], state["best_epoch"] = value, epoch + 1
                save_weights(model, out_dir / "best.safetensors", {"epoch": str(epoch + 1)})
            state["history"].append(record)
            bar.end_epoch(record, task.primary_metric)
            save_state(epoch + 1, 0)
    if rank == 0 and not (out_dir / "best.safetensors").exists():  # epochs: 0 → the initial weights are "best"
        save_weights(model, out_dir / "best.safetensors", {"epoch": "0"})
    return FitResult(state["best_metric"] if state["best_metric"] is not None else float("nan"),
                     state["best_epoch"], state["history"], time.perf_counter() - start)


def _fmt(terms: dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
