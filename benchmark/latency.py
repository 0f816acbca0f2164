"""The latency protocol: one timing loop for every runtime, so numbers are comparable.

Protocol (the anchors' rules, docs/design.md, "Export and benchmark facts"):

- real, preprocessed inputs, cycled; batches are built before timing so stacking is not timed;
- warm-up calls discarded; model load timed separately (`timed_load`);
- repeat until BOTH `min_runs` calls and `min_time_s` seconds are reached;
- each call timed on its own with `time.perf_counter_ns`; no outlier is clipped; percentiles by
  `numpy.percentile` (linear interpolation; with under 100 runs p99 sits near the max);
- torch intra-op threads fixed with `torch.set_num_threads` and recorded (other runtimes take
  their thread count at load time, see `Runtime.load(path, threads)`);
- the harness's own cost (an empty call through the same loop) is measured and recorded, so the
  reader can check it is small against the model (goal: < 2 % of the fastest artifact).

Why not `torch.utils.benchmark.Timer.blocked_autorange` for everything? It times *blocks* of
calls and reports per-block means, so it cannot give per-call tail percentiles (p90/p99), and
using it for eager torch only would make torch numbers come from a different protocol than
ONNX Runtime's or ExecuTorch's. One per-call loop serves all runtimes; `blocked_autorange_ms` gives
`blocked_autorange`'s median as an independent cross-check.

Python's garbage collector is disabled during the timed loop (as `timeit` does): a GC pause is the
harness's cost, not the model's.

On CUDA (`device="cuda"`) a call returns once its kernels are queued, not run. The protocol then
synchronises the device before the first timed call and after every call, inside the timed span,
so each time is the call's full host-to-result latency (trtexec's per-inference "Latency"; also
what `torch.utils.benchmark.Timer` does, which synchronises around each measured block). The
warm-up calls also absorb cuDNN autotuning, lazy module loading and the caching allocator's first
allocations. `blocked_autorange_ms` is the independent cross-check of the median.

A busy machine ruins latency (a 2-thread OpenMP pool spins when another process holds a core), so
each measurement records the CPU time other processes used during the timed loop (`other_cpu`,
in cores, from /proc/stat minus this process's own CPU time; Linux only) and the run-to-run
spread (`spread` = 1.4826 · MAD / median: the robust form of pyperf's std / mean "unstable" check,
so the few OS-jitter outliers of sub-millisecond calls, already shown by p99, do not flag a quiet
machine). `benchmark.environment.load_warnings` turns them into warnings on the card and in report.json.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from compress.core.errors import KdtoolError

T = TypeVar("T")

OVERHEAD_RUNS = 2000


class LatencyMs(BaseModel):
    """The latency summary a report row keeps (milliseconds); older reports may lack the optional fields."""

    model_config = ConfigDict(frozen=True)

    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    batch: int = 1
    threads: int
    runs: int | None = None
    load_ms: float | None = None
    overhead_ms: float | None = None
    spread: float | None = None  # 1.4826 · MAD / median of the per-call times (a robust std / mean)
    other_cpu: float | None = None  # cores other processes kept busy during the timed loop (Linux)

    @classmethod
    def from_stats(cls, stats: LatencyMs) -> LatencyMs:
        """Keep the report's fields of a `LatencyStats`."""
        return cls(**stats.model_dump(include=set(cls.model_fields)))


class LatencyStats(LatencyMs):
    """Per-call latency of one artifact at one batch size and thread count (milliseconds): the report's
    summary plus the measurement's own facts."""

    min: float
    max: float
    runs: int
    batch: int
    warmup: int
    total_s: float
    overhead_ms: float
    device: str = "cpu"

    @property
    def throughput(self) -> float:
        """Samples per second at this batch size (batch / mean latency)."""
        return self.batch / (self.mean / 1e3) if self.mean > 0 else float("inf")

    @property
    def overhead_fraction(self) -> float:
        """Harness overhead as a fraction of the median latency."""
        return self.overhead_ms / self.p50 if self.p50 > 0 else float("inf")


def make_batches(inputs: Sequence[np.ndarray], batch: int) -> list[np.ndarray]:
    """Group real samples into contiguous float batches of `batch` rows, cycling through them.

    Args:
        inputs: preprocessed samples, each with a leading batch axis (usually 1); an array whose
            leading axis already equals `batch` is used as is.
        batch: rows per batch.

    Returns:
        At least one batch; as many distinct batches as the samples allow (at most len(inputs)).
    """
    if batch < 1:
        raise KdtoolError(f"batch size {batch} must be >= 1", "set benchmark.batch_sizes to positive sizes")
    if not inputs:
        raise KdtoolError("no input samples to time the model with", "pass at least one preprocessed sample")
    if all(x.shape[0] == batch for x in inputs):
        return [np.ascontiguousarray(x) for x in inputs]
    rows = [r for x in inputs for r in np.split(x, x.shape[0], axis=0)]
    n = max(1, len(rows) // batch)
    return [np.ascontiguousarray(np.concatenate([rows[(i * batch + j) % len(rows)] for j in range(batch)]))
            for i in range(n)]


def _runner(target: Any) -> Callable[[np.ndarray], Any]:
    """A Session's bound `run`, or the callable itself."""
    run = getattr(target, "run", None)
    if callable(run):
        return run
    if callable(target):
        return target
    raise KdtoolError(f"cannot time a {type(target).__name__}", "pass a Session (with .run) or a callable")


def _timed_loop(fn: Callable[[np.ndarray], Any], batches: list[np.ndarray], min_runs: int,
                min_time_s: float) -> tuple[np.ndarray, float]:
    """Call `fn` until both bounds are met; return per-call ns and the loop's wall seconds."""
    times: list[int] = []
    n = len(batches)
    min_time_ns = int(min_time_s * 1e9)
    clock = time.perf_counter_ns
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = clock()
        i = 0
        while True:
            x = batches[i % n]
            t0 = clock()
            fn(x)
            t1 = clock()
            times.append(t1 - t0)
            i += 1
            if i >= min_runs and t1 - start >= min_time_ns:
                break
        total_s = (clock() - start) / 1e9
    finally:
        if gc_was_enabled:
            gc.enable()
    return np.asarray(times, dtype=np.float64), total_s


def harness_overhead_ms(batches: list[np.ndarray] | None = None, runs: int = OVERHEAD_RUNS) -> float:
    """Median cost in ms of the timing loop around an empty call (the harness's own overhead)."""
    batches = batches or [np.zeros((1,), dtype=np.float32)]
    times, _ = _timed_loop(lambda x: x, batches, runs, 0.0)
    return float(np.median(times) / 1e6)


def _set_torch_threads(threads: int) -> int | None:
    """Set torch's intra-op threads if torch is imported; return the previous value."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return None
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    return previous


def _synchronised(fn: Callable[[np.ndarray], Any], device: str) -> Callable[[np.ndarray], Any]:
    """`fn` followed by a CUDA device synchronisation when `device` is CUDA (else `fn` itself).

    Raises:
        KdtoolError: a CUDA device asked for where torch sees none.
    """
    if not device.startswith("cuda"):
        return fn
    import torch

    if not torch.cuda.is_available():
        raise KdtoolError(f"latency on {device}: torch {torch.__version__} sees no CUDA device",
                          "time on a GPU machine, or measure with device='cpu'")
    sync = torch.cuda.synchronize

    def call(x: np.ndarray) -> Any:
        out = fn(x)
        sync()
        return out

    sync()
    return call


def measure(target: Any, inputs: Sequence[np.ndarray], warmup: int = 10, min_runs: int = 50,
            min_time_s: float = 1.0, threads: int = 2, batch: int = 1,
            load_ms: float | None = None, device: str = "cpu") -> LatencyStats:
    """Time a loaded artifact with the kdtool protocol (see the module docstring).

    Args:
        target: a `Session` (its `.run(np.ndarray)` is timed) or any callable taking one batch.
        inputs: real preprocessed samples (leading batch axis), cycled through.
        warmup: calls made and discarded before timing.
        min_runs: the fewest timed calls.
        min_time_s: the shortest total timed duration; timing stops once both bounds are met.
        threads: torch intra-op threads during timing (recorded; restored afterwards). Sessions of
            other runtimes were given their thread count at load time.
        batch: rows per call.
        load_ms: the artifact's load time, if measured with `timed_load`, to carry in the stats.
        device: "cpu", or "cuda"/"cuda:N" to synchronise the device after every call (module docstring).

    Returns:
        The per-call statistics in milliseconds, with the harness overhead.
    """
    if threads < 1:
        raise KdtoolError(f"threads={threads} must be >= 1", "set benchmark.threads to a positive integer")
    if min_runs < 1 or warmup < 0 or min_time_s < 0:
        raise KdtoolError(f"bad timing bounds warmup={warmup} min_runs={min_runs} min_time_s={min_time_s}",
                          "use warmup >= 0, min_runs >= 1, min_time_s >= 0")
    fn = _synchronised(_runner(target), device)
    batches = make_batches(inputs, batch)
    previous = _set_torch_threads(threads)
    try:
        for i in range(warmup):
            fn(batches[i % len(batches)])
        busy0, own0, wall0 = _busy_cpu_seconds(), time.process_time(), time.perf_counter()
        ns, total_s = _timed_loop(fn, batches, min_runs, min_time_s)
        busy1, own1, wall1 = _busy_cpu_seconds(), time.process_time(), time.perf_counter()
        overhead = harness_overhead_ms(batches)
    finally:
        if previous is not None:
            _set_torch_threads(previous)
    ms = ns / 1e6
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    other = None
    if busy0 is not None and busy1 is not None and wall1 > wall0:
        other = max(0.0, ((busy1 - busy0) - (own1 - own0)) / (wall1 - wall0))
    return LatencyStats(p50=float(p50), p90=float(p90), p99=float(p99), mean=float(ms.mean()),
                        std=float(ms.std()), min=float(ms.min()), max=float(ms.max()), runs=int(ms.size),
                        batch=batch, threads=threads, load_ms=load_ms, warmup=warmup, total_s=total_s,
                        overhead_ms=overhead, device=device,
                        spread=robust_spread(ms), other_cpu=other)


def blocked_autorange_ms(fn: Callable[[], Any], min_run_time_s: float = 0.5) -> float:
    """Median ms per call of `fn` by `torch.utils.benchmark.Timer.blocked_autorange` (a cross-check).

    It times blocks of calls, not single calls (so no tail percentiles), and synchronises CUDA
    around each block when CUDA is present.
    """
    from torch.utils import benchmark as torch_benchmark

    timer = torch_benchmark.Timer(stmt="fn()", globals={"fn": fn})
    return float(timer.blocked_autorange(min_run_time=min_run_time_s).median * 1e3)


def robust_spread(ms: np.ndarray) -> float | None:
    """1.4826 · median absolute deviation / median: std / mean for normal times, blind to rare outliers."""
    median = float(np.median(ms))
    return float(1.4826 * np.median(np.abs(ms - median)) / median) if median > 0 else None


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (/proc/stat), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal ...: all but idle and iowait are busy
    jiffies = [int(v) for v in fields[1:9]]
    busy = sum(jiffies) - jiffies[3] - jiffies[4]
    return busy / os.sysconf("SC_CLK_TCK")


def timed_load(load_fn: Callable[[], T]) -> tuple[T, float]:
    """Call `load_fn` once and return what it loaded and the wall time in ms."""
    t0 = time.perf_counter_ns()
    loaded = load_fn()
    return loaded, (time.perf_counter_ns() - t0) / 1e6


def measure_load(load_fn: Callable[[], Any]) -> float:
    """Wall time in ms of one call of `load_fn` (e.g. `lambda: runtime.load(path, threads)`)."""
    return timed_load(load_fn)[1]
