"""The latency protocol on CUDA: every call synchronised (queued kernels counted), cross-checked by torch's Timer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.latency import blocked_autorange_ms, measure
from compress.core.errors import KdtoolError

SAMPLES = [np.zeros((1, 4), dtype=np.float32)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_latency_without_a_gpu_is_a_one_line_error():
    with pytest.raises(KdtoolError, match="latency on cuda: torch .* sees no CUDA device") as err:
        measure(lambda x: x, SAMPLES, warmup=0, min_runs=1, min_time_s=0.0, device="cuda")
    assert err.value.exit_code == 2 and "\n" not in str(err.value)


def test_cpu_stats_record_their_device_and_match_torch_timer_roughly():
    weight = torch.randn(256, 256)
    x = torch.randn(64, 256)
    stats = measure(lambda _: x @ weight, SAMPLES, warmup=5, min_runs=200, min_time_s=0.1, threads=1)
    assert stats.device == "cpu" and stats.runs >= 200
    reference = blocked_autorange_ms(lambda: x @ weight, 0.1)
    assert 0.2 < stats.p50 / reference < 5  # same order: one call vs. a block's mean, shared machine


@pytest.mark.gpu
def test_cuda_protocol_counts_the_queued_kernels():
    """Unsynchronised, a call returns once its kernels are queued; the protocol must time the kernels."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(3):
        a @ a
    start.record()
    for _ in range(10):
        a @ a
    end.record()
    torch.cuda.synchronize()
    kernel_ms = start.elapsed_time(end) / 10
    synced = measure(lambda _: a @ a, SAMPLES, warmup=5, min_runs=30, min_time_s=0.0, device="cuda")
    assert synced.device == "cuda"
    assert synced.p50 >= 0.9 * kernel_ms  # never less than the GPU's own time for the work
    assert synced.p50 == pytest.approx(blocked_autorange_ms(lambda: a @ a, 0.2), rel=0.25)
    torch.cuda.synchronize()
    unsynced = measure(lambda _: a @ a, SAMPLES, warmup=0, min_runs=30, min_time_s=0.0, device="cpu")
    torch.cuda.synchronize()
    assert unsynced.p50 < 0.5 * synced.p50  # what the protocol would report without the synchronisation
