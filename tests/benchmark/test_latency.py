"""The latency protocol: bounds honoured, percentiles ordered, overhead measured, real sessions timed."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from benchmark.latency import (
    LatencyStats,
    harness_overhead_ms,
    make_batches,
    measure,
    measure_load,
    timed_load,
)
from compress.core.errors import KdtoolError


class EagerSession:
    """A torch-eager Session (the Runtime/Session protocol: run(np.ndarray) -> np.ndarray)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module.eval()

    def run(self, inputs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.module(torch.from_numpy(inputs)).numpy()


def _samples(n: int = 4, shape: tuple[int, ...] = (1, 8)) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal(shape, dtype=np.float32) for _ in range(n)]


def test_sleep_callable_gives_its_duration_and_honours_both_bounds():
    stats = measure(lambda x: time.sleep(0.002), _samples(), warmup=2, min_runs=20, min_time_s=0.2, threads=1)
    assert 1.95 <= stats.p50 <= 3.5  # sleep(2 ms) never returns early; a shared machine adds some
    assert stats.p50 <= stats.p90 <= stats.p99 <= stats.max
    assert stats.min <= stats.p50
    assert stats.runs >= 20
    assert stats.total_s >= 0.2
    assert stats.runs * stats.mean / 1e3 <= stats.total_s * 1.01 + 1e-3
    assert stats.warmup == 2 and stats.threads == 1 and stats.batch == 1


def test_min_runs_dominates_when_time_is_short():
    stats = measure(lambda x: None, _samples(), warmup=0, min_runs=300, min_time_s=0.0)
    assert stats.runs == 300


def test_overhead_is_measured_and_small():
    overhead = harness_overhead_ms()
    assert 0 < overhead < 0.05  # an empty call through the loop costs well under 50 µs
    stats = measure(lambda x: time.sleep(0.001), _samples(), warmup=1, min_runs=10, min_time_s=0.0)
    assert 0 < stats.overhead_ms < 0.05
    assert stats.overhead_fraction < 0.05


def test_torch_threads_set_during_timing_and_restored():
    before = torch.get_num_threads()
    seen = []
    stats = measure(
        lambda x: seen.append(torch.get_num_threads()),
        _samples(),
        warmup=1,
        min_runs=5,
        min_time_s=0.0,
        threads=1,
    )
    assert set(seen) == {1} and stats.threads == 1
    assert torch.get_num_threads() == before


def test_eager_session_batches_and_throughput():
    session = EagerSession(nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4)))
    stats = measure(session, _samples(6), warmup=3, min_runs=30, min_time_s=0.05, batch=4)
    assert stats.batch == 4 and stats.runs >= 30
    assert stats.throughput == pytest.approx(4 / (stats.mean / 1e3))
    assert stats.p50 > 0


def test_make_batches_cycles_real_samples():
    samples = _samples(3)
    batches = make_batches(samples, 2)
    assert [b.shape for b in batches] == [(2, 8)]
    np.testing.assert_array_equal(batches[0][1], samples[1][0])
    assert len(make_batches(samples, 1)) == 3
    with pytest.raises(KdtoolError):
        make_batches([], 1)
    with pytest.raises(KdtoolError):
        make_batches(samples, 0)


def test_load_time_is_measured_separately():
    session, ms = timed_load(lambda: (time.sleep(0.01), "session")[1])
    assert session == "session" and 9.5 <= ms <= 200
    assert measure_load(lambda: time.sleep(0.005)) >= 4.9
    stats = measure(lambda x: None, _samples(), min_runs=5, min_time_s=0.0, load_ms=ms)
    assert stats.load_ms == ms


def test_stats_are_frozen_and_serialisable():
    stats = measure(lambda x: None, _samples(), min_runs=5, min_time_s=0.0)
    assert LatencyStats.model_validate_json(stats.model_dump_json()) == stats
    with pytest.raises(ValidationError):
        stats.p50 = 1.0  # type: ignore[misc]


def test_bad_arguments_are_user_errors():
    with pytest.raises(KdtoolError):
        measure(lambda x: None, _samples(), threads=0)
    with pytest.raises(KdtoolError):
        measure(object(), _samples())


def test_spread_is_robust_to_rare_outliers_but_not_to_a_wide_bulk():
    """A quiet machine's sub-ms calls have rare OS-jitter outliers (p99 shows them): no "unstable" flag;
    a busy machine widens the bulk of the times: flagged (spread above 10 %)."""
    import numpy as np

    from benchmark.latency import robust_spread

    rng = np.random.default_rng(0)
    quiet = np.concatenate([1.0 + 0.01 * rng.standard_normal(500), [40.0, 60.0]])
    assert quiet.std() / quiet.mean() > 1.0  # the plain std / mean is ruined by two outliers
    assert robust_spread(quiet) < 0.03
    busy = rng.uniform(0.5, 1.5, 500)
    assert robust_spread(busy) > 0.3
