"""Is the latency protocol repeatable and honest? A script that prints the evidence as a table.

    python -m tests.perf.repeatability [--model mobilenetv3_small_050] [--size 32] [--rounds 5]

It builds a tiny timm model (1 channel, fed real scikit-learn digits resized to `--size`), then in
each round, back to back in one process: `benchmark.latency.measure` (kdtool's protocol), a plain
hand-written `perf_counter` loop, and `torch.utils.benchmark.Timer.blocked_autorange` (PyTorch's
own timer, an independent reference for the median). Goals: kdtool's p50 within ±3 % of the
median of its rounds, within 5 % of the hand loop's, and harness overhead < 2 % of the latency.
On a shared machine, other processes add noise: read the spread column before the verdict.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class Round:
    """One round's medians (ms) and kdtool's harness overhead (ms)."""

    kdtool_p50: float
    hand_p50: float
    timer_median: float
    overhead_ms: float
    runs: int


def _digits(size: int, n: int = 32) -> list[np.ndarray]:
    """`n` real handwritten digits as (1, 1, size, size) float32 arrays, normalized like training."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    images = torch.from_numpy(load_digits().images[:n].astype(np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - 0.5) / 0.5
    return [s.unsqueeze(0).numpy() for s in x]


def _hand_loop(fn, samples: list[np.ndarray], runs: int, warmup: int) -> float:
    """The simplest honest loop: warm up, time each call, take the median (ms)."""
    for i in range(warmup):
        fn(samples[i % len(samples)])
    times = []
    for i in range(runs):
        t0 = time.perf_counter()
        fn(samples[i % len(samples)])
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def run_rounds(model_name: str = "mobilenetv3_small_050", size: int = 32, rounds: int = 5, threads: int = 2,
               min_time_s: float = 1.0, min_runs: int = 50, warmup: int = 10) -> list[Round]:
    """Measure one tiny model `rounds` times with kdtool, a hand loop and torch's Timer.

    Returns:
        One `Round` per round.
    """
    import timm
    import torch
    from torch.utils import benchmark as tb

    from benchmark.latency import measure

    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, in_chans=1, num_classes=10).eval()
    samples = _digits(size)
    tensors = [torch.from_numpy(s) for s in samples]

    def run(x: np.ndarray) -> np.ndarray:  # a torch-eager Session.run
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    out = []
    for _ in range(rounds):
        stats = measure(run, samples, warmup=warmup, min_runs=min_runs, min_time_s=min_time_s,
                        threads=threads)
        torch.set_num_threads(threads)
        hand = _hand_loop(run, samples, stats.runs, warmup)
        timer = tb.Timer("run(x.numpy())", globals={"run": run, "x": tensors[0]}, num_threads=threads)
        out.append(Round(stats.p50, hand, timer.blocked_autorange(min_run_time=min_time_s).median * 1e3,
                         stats.overhead_ms, stats.runs))
    return out


def render(rounds: list[Round], title: str):  # -> rich.table.Table
    """The evidence table: per round, kdtool p50, its deviation, hand loop, Timer, overhead."""
    from rich.table import Table

    mid = statistics.median(r.kdtool_p50 for r in rounds)
    t = Table(title=title)
    for col in ("round", "runs", "kdtool p50 ms", "vs median", "hand loop p50 ms", "kdtool vs hand",
                "torch Timer median ms", "kdtool vs Timer", "overhead ms", "overhead % of p50"):
        t.add_column(col, justify="right")
    for i, r in enumerate(rounds, 1):
        t.add_row(str(i), str(r.runs), f"{r.kdtool_p50:.3f}", f"{r.kdtool_p50 / mid - 1:+.1%}",
                  f"{r.hand_p50:.3f}", f"{r.kdtool_p50 / r.hand_p50 - 1:+.1%}", f"{r.timer_median:.3f}",
                  f"{r.kdtool_p50 / r.timer_median - 1:+.1%}", f"{r.overhead_ms * 1e3:.2f} µs",
                  f"{r.overhead_ms / r.kdtool_p50:.3%}")
    hand = statistics.median(r.hand_p50 for r in rounds)
    timer = statistics.median(r.timer_median for r in rounds)
    spread = max(abs(r.kdtool_p50 / mid - 1) for r in rounds)
    t.add_section()
    t.add_row("median", "", f"{mid:.3f}", f"max ±{spread:.1%}", f"{hand:.3f}", f"{mid / hand - 1:+.1%}",
              f"{timer:.3f}", f"{mid / timer - 1:+.1%}", "",
              f"{max(r.overhead_ms / r.kdtool_p50 for r in rounds):.3%} max")
    t.caption = (f"goals: spread ≤ ±3% ({'met' if spread <= 0.03 else 'NOT met'}), kdtool vs hand loop ≤ 5% "
                 f"({'met' if abs(mid / hand - 1) <= 0.05 else 'NOT met'}), overhead < 2% "
                 f"({'met' if all(r.overhead_ms / r.kdtool_p50 < 0.02 for r in rounds) else 'NOT met'})")
    return t


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, run the rounds, print the table."""
    from rich.console import Console

    from benchmark.environment import cpu_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mobilenetv3_small_050")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-time", type=float, default=1.0)
    a = p.parse_args(argv)
    load_before = os.getloadavg()[0]
    rounds = run_rounds(a.model, a.size, a.rounds, a.threads, a.min_time)
    table = render(rounds, f"{a.model}@{a.size}px, 1 channel, batch 1, {a.threads} threads, {cpu_model()}")
    table.caption += (f"\nload average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after, on "
                      f"{os.cpu_count()} cores (above the core count: other processes shared the CPU)")
    Console().print(table)
    from tests.perf import results

    results.write("repeatability", ("round", "runs", "kdtool_p50_ms", "hand_loop_p50_ms", "torch_timer_median_ms",
                                    "overhead_us"),
                  [(i, r.runs, round(r.kdtool_p50, 3), round(r.hand_p50, 3), round(r.timer_median, 3),
                    round(r.overhead_ms * 1e3, 2)) for i, r in enumerate(rounds, 1)],
                  note=f"{a.model}@{a.size}px, 1 channel, batch 1, {a.threads} threads; goals: spread <= 3 %, kdtool "
                       f"vs hand loop <= 5 %, overhead < 2 % of p50")


if __name__ == "__main__":
    main()
