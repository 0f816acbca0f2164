"""What the teacher costs a distillation epoch, and what the teacher-output cache gives back.

    python -m tests.perf.kd_cost                          # both setups, 1 thread
    python -m tests.perf.kd_cost --setups quickstart --threads 2

For each setup, three runs of kdtool's own training loop (`compress.distill.trainer.fit`, not a hand loop):
(a) plain student training on hard labels, (b) KD with the teacher run online every step, (c) KD
from the teacher-output cache (`TeacherCache.build` timed separately). The epoch time is `fit`'s
`train_seconds` (the training steps: data, augmentation or cache lookup, forward/backward,
optimizer; validation excluded); epoch 1 carries warm-up, so the comparison uses the fastest
epoch from the second on. Teacher forwards during training are counted with a hook (0 with the
cache). Weights are random (no hub access): the cost does not depend on them.

Setups:
- quickstart: recipes/quickstart.yaml (digits 32 px, 1 channel, batch 64, crop_pad 2, its teacher
  and its ResNet-10-T(4,8,16,32) student), with a 4-view cache (the shipped recipe distills from
  the online teacher: 4 recorded views per sample cost its KD gain, see `kdtool distill --ablate`).
- large: an EfficientNet-B4 teacher at 380 px and a MobileViTv2-0.5 student at 256 px on generated
  380 px images (`synthetic_images`), a few steps of batch 8, hflip + crop_pad 8, cache 2 views.

Goal (issue 3): cached KD ≤ 1.10× plain training from the second epoch on.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from compress.core.tasks import Task
from compress.data.loader import build_datasets
from compress.distill.teacher_cache import TeacherCache
from compress.distill.trainer import fit
from compress.models.build import build_model
from recipes.load import load_recipe
from recipes.schema import AugmentConfig, CacheConfig, DataConfig, ModelConfig, TrainConfig
from tests.perf import results

GOAL = 1.10
MODES = ("plain", "online teacher", "cached teacher")


@dataclass
class Setup:
    """One teacher/student/data combination to time."""

    name: str
    task: Task
    data: DataConfig
    teacher: ModelConfig
    student: ModelConfig
    distill: object
    train: TrainConfig


@dataclass
class Timing:
    """One mode's measured epochs."""

    setup: str
    mode: str
    epochs: list[float]
    build_s: float | None
    teacher_calls: int
    steps_per_epoch: int


def quickstart_setup(epochs: int) -> Setup:
    """The shipped quickstart recipe, its student training settings, `epochs` epochs."""
    r, _, _ = load_recipe("quickstart")
    train = r.student.train.model_copy(update={"epochs": epochs})
    distill = r.distill.model_copy(update={"cache": CacheConfig(enabled=True, views=4)})
    return Setup("quickstart", Task.from_config(r.task), r.data, r.teacher, r.student, distill, train)


def large_setup(epochs: int, steps: int, batch: int) -> Setup:
    """EfficientNet-B4@380 teacher, MobileViTv2-0.5@256 student, `steps` steps of `batch` generated images."""
    r, _, _ = load_recipe("quickstart")
    train_samples = steps * batch
    data = DataConfig(source="synthetic_images", image_size=380, channels=3, val_fraction=0.2,
                      num_samples=train_samples * 5 // 4, batch_size=batch,
                      augment=AugmentConfig(hflip=True, crop_pad=8))
    distill = r.distill.model_copy(update={"cache": CacheConfig(enabled=True, views=2)})
    train = TrainConfig(epochs=epochs, lr=1e-3, scheduler="cosine", batch_size=batch)
    return Setup("large", Task("multiclass", 10), data, ModelConfig(arch="efficientnet_b4", input_size=380),
                 ModelConfig(arch="mobilevitv2_050", input_size=256), distill, train)


def time_mode(s: Setup, mode: str, train_ds, val_ds, work: Path) -> Timing:
    """Run `fit` in one mode; returns its per-epoch training seconds."""
    n_out = s.task.num_outputs
    student = build_model(s.student, n_out, s.data, "student", seed=0)
    teacher = cache = None
    build_s = None
    if mode != "plain":
        teacher = build_model(s.teacher, n_out, s.data, "teacher", seed=1)
        teacher.module.eval()
    if mode == "cached teacher":
        start = time.perf_counter()
        cache = TeacherCache.build(teacher, train_ds, s.data, s.distill.cache, work / "cache",
                                   seed=s.train.seed)
        build_s = time.perf_counter() - start
    batch = s.train.batch_size or s.data.batch_size
    calls = [0]  # teacher forwards on training batches (not the per-epoch agreement pass over val)
    if teacher is not None:
        teacher.module.register_forward_hook(
            lambda _m, inputs, _o: calls.__setitem__(0, calls[0] + (inputs[0].shape[0] <= batch)))
    result = fit(student, train_ds, val_ds, s.task, s.train, work / mode.replace(" ", "_"), data_cfg=s.data,
                 teacher=teacher, distill=s.distill if teacher is not None else None, teacher_cache=cache,
                 label=f"{s.name} {mode}")
    return Timing(s.name, mode, [r["train_seconds"] for r in result.history], build_s,
                  calls[0] // max(s.train.epochs, 1), math.ceil(len(train_ds) / batch))


def render(timings: list[Timing], threads: int) -> bool:
    """Print the rich table; returns whether every setup meets the goal."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Teacher cost per training epoch (kdtool fit, {threads} thread(s), "
                        f"min over epochs ≥ 2)")
    for col in ("setup", "mode", "steps/epoch", "epoch 1 s", "epoch ≥2 s", "× plain", "teacher fwd/epoch",
                "cache build s"):
        table.add_column(col, justify="left" if col in ("setup", "mode") else "right")
    ok = True
    plain = {t.setup: min(t.epochs[1:] or t.epochs) for t in timings if t.mode == "plain"}
    for t in timings:
        later = min(t.epochs[1:] or t.epochs)
        ratio = later / plain[t.setup]
        mark = ""
        if t.mode == "cached teacher":
            ok &= ratio <= GOAL
            mark = " [green]✓[/]" if ratio <= GOAL else " [red]✗[/]"
        build = "" if t.build_s is None else f"{t.build_s:.1f}"
        table.add_row(t.setup, t.mode, str(t.steps_per_epoch), f"{t.epochs[0]:.2f}", f"{later:.2f}",
                      f"{ratio:.2f}×{mark}", str(t.teacher_calls), build)
    console = Console()
    if not console.is_terminal:  # piped to a file: do not squeeze the table into 80 columns
        console = Console(width=132)
    console.print(table)
    results.write("kd_cost", ("setup", "mode", "steps_per_epoch", "epoch_1_s", "epoch_2_on_s", "x_plain",
                              "teacher_fwd_per_epoch", "cache_build_s"),
                  [(t.setup, t.mode, t.steps_per_epoch, round(t.epochs[0], 2), round(min(t.epochs[1:] or t.epochs), 2),
                    round(min(t.epochs[1:] or t.epochs) / plain[t.setup], 2), t.teacher_calls,
                    None if t.build_s is None else round(t.build_s, 1)) for t in timings],
                  note=f"kdtool fit, {threads} thread(s); epoch 2 on: the fastest epoch from the second; goal: cached "
                       f"KD <= {GOAL:.2f}x plain")
    console.print(f"goal: cached KD ≤ {GOAL:.2f}× plain from epoch 2 on: {'met' if ok else 'NOT met'}; "
                  f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
                  f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    return ok


def main(argv: list[str] | None = None) -> int:
    """Time plain / online-teacher / cached-teacher epochs for each setup and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--setups", default="quickstart,large", help="comma-separated: quickstart, large")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (fixed for fairness)")
    ap.add_argument("--epochs", type=int, default=3, help="quickstart epochs (timed: 2 onwards)")
    ap.add_argument("--large-epochs", type=int, default=4, help="large-setup epochs (timed: 2 onwards)")
    ap.add_argument("--large-steps", type=int, default=8)
    ap.add_argument("--large-batch", type=int, default=8)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("KDTOOL_QUIET", "1")
    setups = {"quickstart": lambda: quickstart_setup(args.epochs),
              "large": lambda: large_setup(args.large_epochs, args.large_steps, args.large_batch)}
    timings: list[Timing] = []
    with tempfile.TemporaryDirectory(prefix="kd_cost-") as tmp:
        for name in args.setups.split(","):
            s = setups[name.strip()]()
            train_ds, val_ds = build_datasets(s.data, s.task)
            for mode in MODES:
                t = time_mode(s, mode, train_ds, val_ds, Path(tmp) / name)
                build = f", cache build {t.build_s:.1f} s" if t.build_s is not None else ""
                print(f"{name} {mode}: epochs {[round(e, 2) for e in t.epochs]} s{build}", file=sys.stderr)
                timings.append(t)
    return 0 if render(timings, args.threads) else 1


if __name__ == "__main__":
    raise SystemExit(main())
