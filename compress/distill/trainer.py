"""ONE training loop for the teacher, the student baseline and distillation (the teacher is optional).

Read top to bottom: build the objective and optimizer → (resume) → for each epoch: schedules,
batches (augment → preprocess per model → forward → named loss terms → NaN guard → backward →
clip → step) → validate → checkpoint (last every epoch, best by the task's metric).

Exact resume: the batch order depends only on (seed, epoch), augmentation on (seed, epoch, step),
and the checkpoint holds model, adapters, optimizer, scheduler, RNG states and the position
(mid-epoch: also the epoch's running loss sums). SIGTERM saves a mid-epoch checkpoint and stops
cleanly; a SIGKILL loses at most one epoch.

DDP (torchrun, `compress.distill.distributed`): the batch size is per process (global batch = world ×
batch). One permutation per (seed, epoch) is dealt round-robin to the ranks and augmentation is
drawn for the global batch, so N processes see the same global batches as one; without
BatchNorm they train the same model up to float summation order (tests/compress/test_ddp.py).
Rank 0 writes; all ranks agree on every stop/skip decision, the epoch losses and the val record.
"""

from __future__ import annotations

import logging
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
from torch.utils.data.distributed import DistributedSampler

from compress.core import determinism
from compress.core.errors import KdtoolError, NonFiniteLossError
from compress.core.progress import epoch_progress
from compress.core.tasks import Task, lower_is_better
from compress.data.loader import augment_batch, example_batch, make_loader
from compress.distill import distributed
from compress.distill.checkpoint import load_training_state, save_training_state, save_weights
from compress.models.build import BuiltModel

log = logging.getLogger(__name__)


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


def device_for_training(wanted: str | None = None) -> torch.device:
    """`wanted` ("cpu"/"cuda"; None: CUDA when present), rank-local under torchrun.

    Raises:
        KdtoolError: "cuda" asked for where torch sees no CUDA device (exit 2).
    """
    if wanted == "cuda" and not torch.cuda.is_available():
        raise KdtoolError(f"train.device: cuda, but torch {torch.__version__} sees no CUDA device "
                          f"(built for CUDA {torch.version.cuda or 'none'})",
                          "run on a GPU machine, or remove train.device (CUDA is used when present)")
    if wanted != "cpu" and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def build_optimizer(params: list[nn.Parameter], cfg) -> torch.optim.Optimizer:
    """AdamW, SGD (nesterov, momentum 0.9), or SAM around AdamW."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sam":
        from compress.distill.sam import SAM

        return SAM(params, torch.optim.AdamW, rho=cfg.sam_rho, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, total_steps: int, steps_per_epoch: int = 1):
    """One-cycle, cosine or constant, with `cfg.warmup_epochs` of linear warm-up, stepped per batch."""
    from compress.distill.schedules import lr_scheduler

    return lr_scheduler(optimizer, cfg, total_steps, steps_per_epoch)


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
    if not outs:  # an empty slice of a DDP evaluation
        return torch.empty(0), torch.empty(0)
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
    from compress.distill.objective import KDObjective
    from compress.distill.schedules import value_at

    determinism.configure(getattr(cfg, "threads", determinism.DEFAULT_TRAINING_THREADS))  # same weights anywhere
    torch.manual_seed(cfg.seed)
    device = device_for_training(getattr(cfg, "device", None))
    ddp = distributed.setup()  # torchrun: join the process group (Gloo on CPU, NCCL on CUDA)
    rank, world = distributed.rank(), distributed.world_size()
    out_dir.mkdir(parents=True, exist_ok=True)
    model = student.module.to(device)
    teacher_module = teacher.module.to(device) if teacher is not None else None
    if teacher_module is not None:
        teacher_module.eval()
        for p in teacher_module.parameters():
            p.requires_grad_(False)
    bs = batch_size or cfg.batch_size or data_cfg.batch_size
    raw_example = example_batch(train_ds).to(device)
    hard_task = task.with_label_smoothing(cfg.label_smoothing)  # train.label_smoothing: on the hard loss only
    objective = KDObjective(hard_task, distill if teacher is not None else None, model, teacher_module,
                            student.preprocess(raw_example),
                            teacher.preprocess(raw_example) if teacher is not None else None).to(device)
    if teacher_cache is not None and objective.needs_teacher_features:
        raise KdtoolError("distill.cache.enabled: feature/attention KD terms need the online teacher",
                          "set distill.cache.enabled: false, or keep only response KD terms")
    params = [p for p in model.parameters() if p.requires_grad] + list(objective.parameters())
    optimizer = build_optimizer(params, cfg)
    steps_per_epoch = math.ceil(math.ceil(len(train_ds) / world) / bs)  # per rank (DistributedSampler pads)
    scheduler = build_scheduler(optimizer, cfg, cfg.epochs * steps_per_epoch, steps_per_epoch)
    ema = _build_ema(model, cfg)
    train_model: nn.Module = model
    if ddp:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    state = {"epoch": 0, "step": 0, "best_metric": None, "best_epoch": 0, "history": [], "bad_steps": 0,
             "sums": {}, "seen": 0}
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None  # fp16 gradients underflow unscaled
    if resume:
        loaded = load_training_state(out_dir / "last", model, objective, optimizer, scheduler, scaler=scaler,
                                     ema=ema.module if ema is not None else None)
        if loaded is not None:
            state.update({k: loaded[k] for k in state if k in loaded})
    higher = not lower_is_better(task.primary_metric)
    start = time.perf_counter()

    def save_state(epoch: int, step: int) -> None:
        if rank == 0:
            save_training_state(out_dir / "last", model, objective, optimizer, scheduler,
                                {**state, "epoch": epoch, "step": step, "label": label}, scaler=scaler,
                                ema=ema.module if ema is not None else None)

    with _Interrupt() as interrupt, epoch_progress(label, cfg.epochs, steps_per_epoch, enabled=rank == 0) as bar:
        for epoch in range(state["epoch"], cfg.epochs):
            alpha = value_at(getattr(distill, "alpha_schedule", None), getattr(distill, "alpha", 1.0), epoch + 1)
            temperature = value_at(getattr(distill, "temperature_schedule", None),
                                   getattr(distill, "temperature", 1.0), epoch + 1)
            # One permutation per (seed, epoch) for any world size; rank r takes every world-th sample,
            # so global batch b holds the same samples with 1 or N processes (DDP == one process).
            sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
            sampler.set_epoch(epoch)
            loader = make_loader(train_ds, bs, shuffle=True, seed=cfg.seed, epoch=epoch,
                                 num_workers=data_cfg.num_workers, sampler=sampler)
            model.train()
            resuming = state["step"] > 0 and distributed.is_main()  # partial sums are global, kept on rank 0
            sums: dict[str, float] = dict(state["sums"]) if resuming else {}
            seen = int(state["seen"]) if resuming else 0
            bar.start_epoch(epoch + 1)
            epoch_start = time.perf_counter()
            for step, (raw, targets, index) in enumerate(loader):
                if step < state["step"]:  # resuming mid-epoch: replay the order, skip done steps
                    continue
                gen = torch.Generator().manual_seed(hash((cfg.seed, epoch, step)) % 2**31)
                raw, targets = raw.to(device), targets.to(device)
                t_out, t_feats = None, {}
                if teacher_cache is not None:
                    raw, t_out = teacher_cache.lookup(raw.cpu(), index, gen, shard=(rank, world))
                    raw, t_out = raw.to(device), t_out.to(device).float()
                else:
                    raw, _ = augment_batch(raw, data_cfg, gen, shard=(rank, world))
                    if teacher_module is not None:
                        t_out, t_feats = objective.teacher_forward(teacher.preprocess(raw))

                def closure(raw=raw, t_out=t_out, t_feats=t_feats, targets=targets) -> dict[str, torch.Tensor]:
                    """This step's named loss terms (run twice per step by SAM)."""
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        s_out, s_feats = objective.student_forward(student.preprocess(raw), runner=train_model)
                    return objective(s_out, s_feats, t_out, t_feats, targets, alpha=alpha,  # noqa: B023
                                     temperature=temperature)  # noqa: B023  (epoch constants)

                stats = _buffers(model, objective) if cfg.nan_policy == "skip" else None
                terms = closure()
                loss = terms["total"]
                if distributed.any_true(~torch.isfinite(loss)):  # every rank skips or stops together
                    state["bad_steps"] += 1
                    where = f"{label}: non-finite loss at epoch {epoch + 1} step {step + 1} ({_fmt(terms)})"
                    if cfg.nan_policy == "stop" or state["bad_steps"] > cfg.max_bad_steps:
                        raise NonFiniteLossError(
                            where + f"; last good checkpoint kept in {out_dir}",
                            "pre-train the student first (stage baseline), lower distill.temperature or lr, "
                            "or set train.nan_policy: skip")
                    if distributed.is_main():  # a warning, shown even when progress is quiet
                        log.warning("skipped %s (%d/%d)", where, state["bad_steps"], cfg.max_bad_steps)
                    _restore(stats)  # the bad forward already moved BatchNorm's running stats: undo it
                    optimizer.zero_grad(set_to_none=True)
                    continue
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                distributed.average_gradients(objective.parameters())  # adapters sit outside DDP
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                if cfg.optimizer == "sam":
                    optimizer.first_step(zero_grad=True)
                    closure()["total"].backward()
                    distributed.average_gradients(objective.parameters())
                    optimizer.second_step(zero_grad=True)
                elif scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
                if ema is not None:
                    ema.update(model, step=epoch * steps_per_epoch + step + 1)
                n = len(targets)
                seen += n
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
                bar.advance({k: v / seen for k, v in sums.items()})
                if distributed.any_true(interrupt.requested):
                    totals = distributed.sum_floats({**sums, "_seen": float(seen)})
                    state["seen"], state["sums"] = int(totals.pop("_seen")), totals
                    save_state(epoch, step + 1)
                    distributed.barrier()  # the state is whole before any rank returns
                    if distributed.is_main():
                        bar.log(f"SIGTERM: saved {out_dir / 'last.json'} at epoch {epoch + 1} "
                                f"step {step + 1}; continue with --resume")
                    best = state["best_metric"]
                    return FitResult(best if best is not None else float("nan"), state["best_epoch"],
                                     state["history"], time.perf_counter() - start, interrupted=True)
            state["step"], state["sums"], state["seen"] = 0, {}, 0
            train_seconds = time.perf_counter() - epoch_start
            distributed.broadcast_buffers(model)  # BatchNorm stats: every rank holds rank 0's model
            totals = distributed.sum_floats({**sums, "_seen": float(seen)})  # losses over all ranks' samples
            seen_all = max(totals.pop("_seen"), 1)
            # each rank predicts its slice of the validation set; rank 0 scores the gathered outputs and
            # sends its record to the others (one metric, one best-checkpoint decision on every rank)
            val_part = distributed.shard(val_ds)
            scored = ema.module if ema is not None else model  # with EMA, the averaged weights are the model
            outputs, val_targets = predict(scored, student.preprocess, val_part, device=device)
            outputs, val_targets = distributed.gather(outputs), distributed.gather(val_targets)
            t_outputs = None
            if teacher_module is not None and teacher_cache is None:
                t_outputs, _ = predict(teacher_module, teacher.preprocess, val_part, device=device)
                t_outputs = distributed.gather(t_outputs)
            record = None
            if distributed.is_main():
                metrics = task.metrics(outputs, val_targets)
                record = {"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0], "alpha": alpha,
                          "temperature": temperature,
                          **{f"loss_{k}": v / seen_all for k, v in totals.items()},
                          **{f"val_{k}": v for k, v in metrics.items()}, "train_seconds": train_seconds,
                          "skipped_steps": state["bad_steps"]}
                if t_outputs is not None:
                    record["teacher_agreement"] = task.agreement(outputs, t_outputs)
            record = distributed.broadcast_object(record)
            value = record[f"val_{task.primary_metric}"]
            # an undefined metric (None) cannot rank epochs: the latest weights are kept until one is defined
            improved = state["best_metric"] is None or (value is not None and (
                value > state["best_metric"] if higher else value < state["best_metric"]))
            if improved:
                state["best_metric"], state["best_epoch"] = value, epoch + 1
                if rank == 0:
                    save_weights(scored, out_dir / "best.safetensors", {"epoch": str(epoch + 1)})
            state["history"].append(record)
            if distributed.is_main():
                bar.end_epoch(record, task.primary_metric)
            save_state(epoch + 1, 0)
    if rank == 0 and not (out_dir / "best.safetensors").exists():  # epochs: 0 → the initial weights are "best"
        save_weights(model, out_dir / "best.safetensors", {"epoch": "0"})
    distributed.barrier()  # best.safetensors and last.* are whole before any rank reads them
    return FitResult(state["best_metric"] if state["best_metric"] is not None else float("nan"),
                     state["best_epoch"], state["history"], time.perf_counter() - start)


def _build_ema(model: nn.Module, cfg) -> Any:
    """timm's `ModelEmaV3` when `train.ema_decay` is set (warm-up on: short runs are not dominated by init)."""
    decay = getattr(cfg, "ema_decay", None)
    if not decay:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay, use_warmup=True)


def _buffers(*modules: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(buffer, copy) pairs: BatchNorm running stats and counters, to undo a skipped batch's forward."""
    return [(b, b.detach().clone()) for m in modules for b in m.buffers()]


def _restore(saved: list[tuple[torch.Tensor, torch.Tensor]] | None) -> None:
    with torch.no_grad():
        for buffer, copy in saved or []:
            buffer.copy_(copy)


def _fmt(terms: dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
