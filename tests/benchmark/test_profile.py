"""Size, parameters, FLOPs and peak memory against numbers known by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from benchmark.cost import (
    artifact_files,
    artifact_size_mb,
    count_params,
    gflops_per_sample,
    peak_memory_mb,
)
from compress.core.errors import KdtoolError


def test_linear_flops_are_two_per_multiply_add():
    layer = nn.Linear(10, 5)
    assert gflops_per_sample(layer, torch.zeros(1, 10)) * 1e9 == pytest.approx(2 * 10 * 5)
    # per sample: the same at batch 4, and numpy inputs work
    assert gflops_per_sample(layer, np.zeros((4, 10), dtype=np.float32)) * 1e9 == pytest.approx(100)


def test_conv_flops_match_the_formula_and_mode_is_restored():
    conv = nn.Conv2d(1, 4, kernel_size=3)  # 8x8 input, no padding: 6x6 output, 4 channels
    conv.train()
    flops = gflops_per_sample(conv, torch.zeros(2, 1, 8, 8)) * 1e9
    assert flops == pytest.approx(2 * (4 * 6 * 6) * (1 * 3 * 3))
    assert conv.training


def test_params():
    assert count_params(nn.Linear(10, 5)) == 55


def test_size_counts_every_file_of_the_artifact(tmp_path):
    main, data = tmp_path / "model.onnx", tmp_path / "model.onnx.data"
    main.write_bytes(b"x" * 1000)
    data.write_bytes(b"y" * 250_000)
    files = artifact_files(main, [data, main])
    assert files == [main, data]
    assert artifact_size_mb(files) == pytest.approx(0.251)
    bundle = tmp_path / "model.mlpackage"
    (bundle / "Data").mkdir(parents=True)
    (bundle / "Data" / "weights.bin").write_bytes(b"z" * 500_000)
    (bundle / "Manifest.json").write_bytes(b"{}")
    assert artifact_size_mb([bundle]) == pytest.approx(0.500002)
    with pytest.raises(KdtoolError, match="missing.onnx"):
        artifact_size_mb([tmp_path / "missing.onnx"])


def test_peak_memory_sees_native_allocations():
    def allocate():
        buf = np.ones(60_000_000 // 8)  # 60 MB touched by numpy's C allocator
        return float(buf[-1])

    mb = peak_memory_mb(allocate)
    assert 50 <= mb <= 200
    assert peak_memory_mb(lambda: None) < 10
