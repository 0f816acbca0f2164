"""ONE training loop for the teacher, the student baseline and distillation (the teacher is optional),
and ONE optimisation step (`TrainStep`) that quantization-aware training (`compress.quant.qat`) shares.

Read top to bottom: `fit` → `_FitRun.setup` (objective, `TrainStep`: optimizer, scheduler, AMP,
EMA) → (resume) → for each epoch: `kd_weights` (alpha/temperature schedules), `train_epoch`
(augment → preprocess per model → forward → named loss terms → `TrainStep`: NaN guard → backward →
clip → step) → `validate` → checkpoint (last every epoch, best by the task's metric).

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
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

from compress.core import determinism
from compress.core.errors import KdtoolError, NonFiniteLossError
from compress.core.progress import epoch_progress
from compress.core.tasks import Task, lower_is_better
from compress.data.batches import LoaderBatches
from compress.data.loader import augment_batch, collect_outputs, example_batch, make_loader
from compress.distill import distributed
from compress.distill.checkpoint import load_training_state, save_training_state, save_weights
from compress.distill.schedules import kd_weights
from compress.models.build import BuiltModel
from recipes.schema import DataConfig, DistillConfig, TrainConfig

if TYPE_CHECKING:
    from compress.distill.objective import KDObjective
    from compress.distill.teacher_cache import TeacherCache

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


def build_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, SGD (nesterov, momentum 0.9), or SAM around AdamW (pytorch-optimizer's `SAM`, ρ = `sam_rho`).

    SAM (Foret et al., ICLR 2021) takes two passes per step: `first_step` climbs to w + ρ·g/‖g‖₂,
    `second_step` restores w and takes the AdamW step with the gradient at w + ε (`TrainStep.step`).
    """
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sam":
        from pytorch_optimizer import SAM

        return SAM(params, torch.optim.AdamW, rho=cfg.sam_rho, adaptive=False, lr=cfg.lr,
                   weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int,
                    steps_per_epoch: int = 1) -> torch.optim.lr_scheduler.LRScheduler:
    """One-cycle, cosine or constant, with `cfg.warmup_epochs` of linear warm-up, stepped per batch."""
    from compress.distill.schedules import lr_scheduler

    return lr_scheduler(optimizer, cfg, total_steps, steps_per_epoch)


@torch.no_grad()
def predict(module: nn.Module, preprocess, ds: Dataset, batch_size: int = 256,
            device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a model over a dataset (or a user's loader, `LoaderBatches`) in order; returns (outputs, targets) on CPU."""
    device = device or torch.device("cpu")
    was_training = module.training
    module.eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        out = module(x)
        return (out[0] if isinstance(out, tuple) else out).float().cpu()

    loader = ds if isinstance(ds, LoaderBatches) else make_loader(ds, batch_size, shuffle=False, seed=0)
    outputs = collect_outputs(run, loader, lambda raw: preprocess(raw.to(device)))
    module.train(was_training)
    return outputs


def evaluate(module: nn.Module, preprocess, ds: Dataset, task: Task, batch_size: int = 256,
             device: torch.device | None = None) -> tuple[dict[str, float], torch.Tensor]:
    """Task metrics of a model on a dataset; also returns its outputs (for agreement)."""
    outputs, targets = predict(module, preprocess, ds, batch_size, device)
    return task.metrics(outputs, targets), outputs


class TrainStep:
    """ONE optimisation step, shared by every training in kdtool: teacher, baseline, distillation and QAT.

    Built from a `TrainConfig`: the optimizer (`optimizer`, `lr`, `weight_decay`, `sam_rho`), the
    per-batch scheduler (`scheduler`), the AMP dtype and scaler (`amp`), the weight EMA (`ema_decay`),
    clipping (`grad_clip`) and the NaN policy (`nan_policy`, `max_bad_steps`). A call runs the loss
    closure → NaN guard (stop, or skip and undo the batch's BatchNorm update) → backward → average the
    extra parameters' gradients over DDP ranks → clip → step (SAM: two passes) → scheduler → EMA.

    Args:
        model: the trained module (EMA source; its buffers are restored on a skipped step).
        extra: trained parameters outside `model` (the KD objective's adapters), or None.
        cfg: the stage's training settings.
        total_steps: optimizer steps of the whole run (the scheduler's length).
        device: where training runs (AMP's autocast device).
        hint: the fix named when a non-finite loss stops training.
        steps_per_epoch: optimizer steps per epoch (turns `warmup_epochs` into steps).
    """

    def __init__(self, model: nn.Module, extra: nn.Module | None, cfg: TrainConfig, total_steps: int,
                 device: torch.device, hint: str, steps_per_epoch: int = 1) -> None:
        self.cfg, self.model, self.extra, self.device, self.hint = cfg, model, extra, device, hint
        extra_params = list(extra.parameters()) if extra is not None else []
        self.params = [p for p in model.parameters() if p.requires_grad] + extra_params
        self.optimizer = build_optimizer(self.params, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, total_steps, steps_per_epoch)
        self.ema = _build_ema(model, cfg)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
        self.scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None  # fp16 grads underflow
        self.bad_steps = 0

    def autocast(self) -> torch.autocast:
        """The forward pass's autocast context (`train.amp`; disabled when off)."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def __call__(self, closure: Callable[[], dict[str, torch.Tensor]], where: str, kept: str,
                 global_step: int) -> dict[str, torch.Tensor] | None:
        """One step; returns the loss terms, or None when a non-finite loss was skipped.

        Args:
            closure: computes this batch's named loss terms (`"total"` is minimised); SAM calls it twice.
            where: names the step in messages, e.g. "kd: non-finite loss at epoch 2 step 5".
            kept: appended to the stop message (where the last good state is).
            global_step: 1-based optimizer step of the run (EMA warm-up).

        Raises:
            NonFiniteLossError: a NaN/Inf loss under nan_policy=stop, or past `max_bad_steps` skips.
        """
        cfg, optimizer = self.cfg, self.optimizer
        stats = _buffers(self.model, *([self.extra] if self.extra is not None else [])) \
            if cfg.nan_policy == "skip" else None
        terms = closure()
        loss = terms["total"]
        if distributed.any_true(~torch.isfinite(loss)):  # every rank skips or stops together
            self.bad_steps += 1
            where = f"{where} ({_fmt(terms)})"
            if cfg.nan_policy == "stop" or self.bad_steps > cfg.max_bad_steps:
                raise NonFiniteLossError(where + kept, self.hint)
            if distributed.is_main():  # a warning, shown even when progress is quiet
                log.warning("skipped %s (%d/%d)", where, self.bad_steps, cfg.max_bad_steps)
            _restore(stats)  # the bad forward already moved BatchNorm's running stats: undo it
            optimizer.zero_grad(set_to_none=True)
            return None
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(optimizer)
        else:
            loss.backward()
        extra_params = list(self.extra.parameters()) if self.extra is not None else []
        distributed.average_gradients(extra_params)  # adapters sit outside DDP
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        if cfg.optimizer == "sam":
            optimizer.first_step(zero_grad=True)
            closure()["total"].backward()
            distributed.average_gradients(extra_params)
            optimizer.second_step(zero_grad=True)
        elif self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model, step=global_step)
        return terms

    @property
    def scored(self) -> nn.Module:
        """The weights to validate and keep: the EMA's when `ema_decay` is set, else the model's."""
        return self.ema.module if self.ema is not None else self.model


class LossSums:
    """Sample-weighted running sums of the loss terms over an epoch (means for the bar and the history)."""

    def __init__(self, sums: dict[str, float] | None = None, seen: int = 0) -> None:
        self.sums: dict[str, float] = dict(sums or {})
        self.seen = seen

    def add(self, terms: dict[str, torch.Tensor], n: int) -> None:
        """Adds one batch of `n` samples."""
        self.seen += n
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v.detach()) * n

    def means(self) -> dict[str, float]:
        """Mean of each term over the samples seen so far."""
        return {k: v / self.seen for k, v in self.sums.items()}


def fit(student: BuiltModel, train_ds: Dataset, val_ds: Dataset, task: Task, cfg: TrainConfig, out_dir: Path, *,
        data_cfg: DataConfig, teacher: BuiltModel | None = None, distill: DistillConfig | None = None,
        teacher_cache: TeacherCache | None = None, resume: bool = False, label: str = "train",
        batch_size: int | None = None, on_epoch: Callable[[dict[str, Any]], None] | None = None) -> FitResult:
    """Train `student` (with a teacher: distill), checkpointing into `out_dir`.

    Args:
        student: the model being trained, with its preprocessing.
        train_ds, val_ds: datasets yielding (raw, target, index), or the user's loaders as
            `LoaderBatches` (used as given: their sampler, collate_fn and batch size; no teacher cache).
        task: the task kind (hard loss, metrics).
        cfg: the stage's training settings (epochs, lr, optimizer, scheduler, clipping, AMP, NaN policy, seed).
        out_dir: where `last.*` (resumable state) and `best.safetensors` go.
        data_cfg: the recipe's data section (augmentation, batch size, workers).
        teacher: frozen teacher; None trains on hard labels only (teacher training, baseline).
        distill: temperature, alpha, schedules and extra KD terms.
        teacher_cache: serves teacher outputs for recorded views (no teacher forward).
        resume: continue from `out_dir/last.*` exactly.
        label: the progress bar's title.
        batch_size: overrides cfg.batch_size / data_cfg.batch_size.
        on_epoch: called with each epoch's validation record after it is checkpointed (a sweep prunes
            poor trials from it by raising; `last.*` and `best.safetensors` are already whole).

    Raises:
        NonFiniteLossError: a NaN/Inf loss under nan_policy=stop (exit code 3; last good checkpoint kept).
    """
    run = _FitRun.setup(student, train_ds, val_ds, task, cfg, out_dir, data_cfg, teacher, distill, teacher_cache,
                        label, batch_size)
    if resume:
        run.resume()
    start = time.perf_counter()
    state = run.state
    with _Interrupt() as interrupt, epoch_progress(label, cfg.epochs, run.steps_per_epoch,
                                                   enabled=run.rank == 0) as bar:
        for epoch in range(state["epoch"], cfg.epochs):
            alpha, temperature = kd_weights(distill, epoch + 1)
            epoch_start = time.perf_counter()
            sums = run.train_epoch(epoch, alpha, temperature, bar, interrupt)
            if sums is None:
                best = state["best_metric"]
                return FitResult(best if best is not None else float("nan"), state["best_epoch"],
                                 state["history"], time.perf_counter() - start, interrupted=True)
            state["step"], state["sums"], state["seen"] = 0, {}, 0
            run.validate(epoch, alpha, temperature, sums, time.perf_counter() - epoch_start, bar)
            if on_epoch is not None:
                on_epoch(state["history"][-1])
    if run.rank == 0 and not (out_dir / "best.safetensors").exists():  # epochs: 0 → the initial weights are "best"
        save_weights(run.model, out_dir / "best.safetensors", {"epoch": "0"})
    distributed.barrier()  # best.safetensors and last.* are whole before any rank reads them
    return FitResult(state["best_metric"] if state["best_metric"] is not None else float("nan"),
                     state["best_epoch"], state["history"], time.perf_counter() - start)


@dataclass
class _FitRun:
    """Everything one `fit` call trains with, and its epoch body (train, then validate and checkpoint)."""

    student: BuiltModel
    teacher: BuiltModel | None
    train_ds: Dataset
    val_ds: Dataset
    task: Task
    cfg: TrainConfig
    data_cfg: DataConfig
    out_dir: Path
    label: str
    teacher_cache: TeacherCache | None
    device: torch.device
    model: nn.Module
    teacher_module: nn.Module | None
    objective: KDObjective
    step: TrainStep
    train_model: nn.Module
    bs: int
    steps_per_epoch: int
    rank: int
    world: int
    state: dict[str, Any]

    @classmethod
    def setup(cls, student: BuiltModel, train_ds: Dataset, val_ds: Dataset, task: Task, cfg: TrainConfig,
              out_dir: Path, data_cfg: DataConfig, teacher: BuiltModel | None, distill: DistillConfig | None,
              teacher_cache: TeacherCache | None, label: str, batch_size: int | None) -> _FitRun:
        """Seed, join DDP, move the models, build the objective and the training step."""
        from compress.distill.objective import KDObjective

        determinism.configure(cfg.threads)  # the same weights on any machine of this kind
        torch.manual_seed(cfg.seed)
        device = distributed.device_for_training(cfg.device)
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
        raw_example = _example(train_ds).to(device)
        hard_task = task.with_label_smoothing(cfg.label_smoothing)  # train.label_smoothing: the hard loss only
        objective = KDObjective(hard_task, distill if teacher is not None else None, model, teacher_module,
                                student.preprocess(raw_example),
                                teacher.preprocess(raw_example) if teacher is not None else None).to(device)
        if teacher_cache is not None and objective.needs_teacher_features:
            raise KdtoolError("distill.cache.enabled: feature/attention KD terms need the online teacher",
                              "set distill.cache.enabled: false, or keep only response KD terms")
        steps_per_epoch = (len(train_ds) if isinstance(train_ds, LoaderBatches)  # the user's loader decides
                           else math.ceil(math.ceil(len(train_ds) / world) / bs))  # per rank (DistributedSampler pads)
        step = TrainStep(model, objective, cfg, cfg.epochs * steps_per_epoch, device,
                         "pre-train the student first (stage baseline), lower distill.temperature or lr, "
                         "or set train.nan_policy: skip", steps_per_epoch)
        train_model: nn.Module = model
        if ddp:
            from torch.nn.parallel import DistributedDataParallel

            train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        state = {"epoch": 0, "step": 0, "best_metric": None, "best_epoch": 0, "history": [], "bad_steps": 0,
                 "sums": {}, "seen": 0}
        return cls(student, teacher, train_ds, val_ds, task, cfg, data_cfg, out_dir, label, teacher_cache, device,
                   model, teacher_module, objective, step, train_model, bs, steps_per_epoch, rank, world, state)

    def resume(self) -> None:
        """Continue from `out_dir/last.*`: weights, adapters, optimizer, scheduler, scaler, EMA, position."""
        step = self.step
        loaded = load_training_state(self.out_dir / "last", self.model, self.objective, step.optimizer,
                                     step.scheduler, scaler=step.scaler,
                                     ema=step.ema.module if step.ema is not None else None)
        if loaded is not None:
            self.state.update({k: loaded[k] for k in self.state if k in loaded})
        step.bad_steps = self.state["bad_steps"]

    def save_state(self, epoch: int, step: int) -> None:
        """Rank 0 writes the resumable state (`last.*`) at this position."""
        if self.rank == 0:
            ts = self.step
            save_training_state(self.out_dir / "last", self.model, self.objective, ts.optimizer, ts.scheduler,
                                {**self.state, "bad_steps": ts.bad_steps, "epoch": epoch, "step": step,
                                 "label": self.label}, scaler=ts.scaler,
                                ema=ts.ema.module if ts.ema is not None else None)

    def train_epoch(self, epoch: int, alpha: float, temperature: float, bar: Any,
                    interrupt: _Interrupt) -> LossSums | None:
        """One epoch of steps; returns its loss sums, or None when SIGTERM stopped it (state saved)."""
        cfg, state, device = self.cfg, self.state, self.device
        loader = self._epoch_loader(epoch)
        self.model.train()
        resuming = state["step"] > 0 and distributed.is_main()  # partial sums are global, kept on rank 0
        sums = LossSums(state["sums"], int(state["seen"])) if resuming else LossSums()
        bar.start_epoch(epoch + 1)
        for step, (raw, targets, index) in enumerate(loader):
            if step < state["step"]:  # resuming mid-epoch: replay the order, skip done steps
                continue
            gen = torch.Generator().manual_seed(hash((cfg.seed, epoch, step)) % 2**31)
            raw, targets = raw.to(device), targets.to(device)
            closure = self._closure(raw, targets, index, gen, alpha, temperature)
            terms = self.step(closure, f"{self.label}: non-finite loss at epoch {epoch + 1} step {step + 1}",
                              f"; last good checkpoint kept in {self.out_dir}",
                              epoch * self.steps_per_epoch + step + 1)
            if terms is None:
                continue
            sums.add(terms, len(targets))
            bar.advance(sums.means())
            if distributed.any_true(interrupt.requested):
                totals = distributed.sum_floats({**sums.sums, "_seen": float(sums.seen)})
                state["seen"], state["sums"] = int(totals.pop("_seen")), totals
                self.save_state(epoch, step + 1)
                distributed.barrier()  # the state is whole before any rank returns
                if distributed.is_main():
                    bar.log(f"SIGTERM: saved {self.out_dir / 'last.json'} at epoch {epoch + 1} "
                            f"step {step + 1}; continue with --resume")
                return None
        return sums

    def _epoch_loader(self, epoch: int) -> Any:
        """This epoch's batches: the user's loader as given, else one permutation per (seed, epoch)
        for any world size; rank r takes every world-th sample, so global batch b holds the same
        samples with 1 or N processes (DDP == one process)."""
        if isinstance(self.train_ds, LoaderBatches):
            self.train_ds.set_epoch(epoch)
            return self.train_ds
        cfg = self.cfg
        sampler = DistributedSampler(self.train_ds, num_replicas=self.world, rank=self.rank, shuffle=True,
                                     seed=cfg.seed)
        sampler.set_epoch(epoch)
        return make_loader(self.train_ds, self.bs, shuffle=True, seed=cfg.seed, epoch=epoch,
                           num_workers=self.data_cfg.num_workers, sampler=sampler)

    def _closure(self, raw: torch.Tensor, targets: torch.Tensor, index: torch.Tensor, gen: torch.Generator,
                 alpha: float, temperature: float) -> Callable[[], dict[str, torch.Tensor]]:
        """This batch's loss closure: augment (or look up the cache), teacher forward, then student + terms."""
        device, objective, teacher = self.device, self.objective, self.teacher
        t_out, t_feats = None, {}
        if self.teacher_cache is not None:
            raw, t_out = self.teacher_cache.lookup(raw.cpu(), index, gen, shard=(self.rank, self.world))
            raw, t_out = raw.to(device), t_out.to(device).float()
        else:
            raw, _ = augment_batch(raw, self.data_cfg, gen, shard=(self.rank, self.world))
            if self.teacher_module is not None:
                t_out, t_feats = objective.teacher_forward(teacher.preprocess(raw))

        def closure() -> dict[str, torch.Tensor]:
            """This step's named loss terms (run twice per step by SAM)."""
            with self.step.autocast():
                s_out, s_feats = objective.student_forward(self.student.preprocess(raw), runner=self.train_model)
            return objective(s_out, s_feats, t_out, t_feats, targets, alpha=alpha, temperature=temperature)

        return closure

    def validate(self, epoch: int, alpha: float, temperature: float, sums: LossSums, train_seconds: float,
                 bar: Any) -> None:
        """Score the epoch on validation, keep the best weights, record the history, save `last.*`."""
        state, task = self.state, self.task
        distributed.broadcast_buffers(self.model)  # BatchNorm stats: every rank holds rank 0's model
        totals = distributed.sum_floats({**sums.sums, "_seen": float(sums.seen)})  # losses over all ranks
        seen_all = max(totals.pop("_seen"), 1)
        # each rank predicts its slice of the validation set; rank 0 scores the gathered outputs and
        # sends its record to the others (one metric, one best-checkpoint decision on every rank)
        sharded = not isinstance(self.val_ds, LoaderBatches)  # a user's val loader: every rank runs it whole
        val_part = distributed.shard(self.val_ds) if sharded else self.val_ds
        gather = distributed.gather if sharded else (lambda t: t)
        scored = self.step.scored  # with EMA, the averaged weights are the model
        outputs, val_targets = predict(scored, self.student.preprocess, val_part, device=self.device)
        outputs, val_targets = gather(outputs), gather(val_targets)
        t_outputs = None
        if self.teacher_module is not None and self.teacher_cache is None:
            t_outputs, _ = predict(self.teacher_module, self.teacher.preprocess, val_part, device=self.device)
            t_outputs = gather(t_outputs)
        record = None
        if distributed.is_main():
            metrics = task.metrics(outputs, val_targets)
            record = {"epoch": epoch + 1, "lr": self.step.scheduler.get_last_lr()[0], "alpha": alpha,
                      "temperature": temperature,
                      **{f"loss_{k}": v / seen_all for k, v in totals.items()},
                      **{f"val_{k}": v for k, v in metrics.items()}, "train_seconds": train_seconds,
                      "skipped_steps": self.step.bad_steps}
            if t_outputs is not None:
                record["teacher_agreement"] = task.agreement(outputs, t_outputs)
        record = distributed.broadcast_object(record)
        value = record[f"val_{task.primary_metric}"]
        higher = not lower_is_better(task.primary_metric)
        best = state["best_metric"]
        # an undefined metric (None) cannot rank epochs: the latest weights are kept until one is defined
        if best is None or (value is not None and (value > best if higher else value < best)):
            state["best_metric"], state["best_epoch"] = value, epoch + 1
            if self.rank == 0:
                save_weights(scored, self.out_dir / "best.safetensors", {"epoch": str(epoch + 1)})
        state["history"].append(record)
        if distributed.is_main():
            bar.end_epoch(record, task.primary_metric)
        self.save_state(epoch + 1, 0)


def _example(train: Dataset | LoaderBatches) -> torch.Tensor:
    """Two raw training samples (adapter sizing): the first batch's when the user's loader is given."""
    return train.first()[0][:2] if isinstance(train, LoaderBatches) else example_batch(train)


def _build_ema(model: nn.Module, cfg: TrainConfig) -> Any:
    """timm's `ModelEmaV3` when `train.ema_decay` is set (warm-up on: short runs are not dominated by init)."""
    decay = cfg.ema_decay
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
            if buffer.shape != copy.shape:  # QAT's observers size their ranges on the first forward
                buffer.resize_(copy.shape)
            buffer.copy_(copy)


def _fmt(terms: dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
