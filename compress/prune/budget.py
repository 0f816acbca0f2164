"""What a pruning budget bounds: parameters, GFLOPs per sample, or latency measured on a runtime."""

from __future__ import annotations

import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress.core.errors import KdtoolError
from compress.distill.sanity import gflops
from compress.models.build import count_params
from compress.prune.pruner import Measure
from recipes.schema import PruneConfig

LATENCY_WARMUP, LATENCY_RUNS = 5, 30


def budget_of(cfg: PruneConfig, example: torch.Tensor, threads: int) -> tuple[str, float, Measure] | None:
    """(recipe key, budget, measure) of the recipe's budget, or None when it prunes to a ratio."""
    one = example[:1]
    if cfg.max_params is not None:
        return "max_params", float(cfg.max_params), lambda m: float(count_params(m))
    if cfg.max_gflops is not None:
        return "max_gflops", cfg.max_gflops, lambda m: gflops(m.eval(), one)
    if cfg.max_latency_ms is not None:
        return "max_latency_ms", cfg.max_latency_ms, lambda m: latency_ms(m, one, cfg.latency_runtime, threads)
    return None


def latency_ms(model: nn.Module, example: torch.Tensor, runtime: str, threads: int) -> float:
    """Median batch-1 latency (ms) of `model` on `runtime` (onnxruntime: exported to ONNX first).

    Raises:
        KdtoolError: on onnxruntime, the model cannot be exported to ONNX.
    """
    model.eval()
    if runtime == "torch":
        previous = torch.get_num_threads()  # the caller's thread count is theirs: timing borrows it
        torch.set_num_threads(threads)
        try:
            with torch.no_grad():
                return _median_ms(lambda: model(example))
        finally:
            torch.set_num_threads(previous)
    from compress.core.onnxrt import ort_session

    with tempfile.TemporaryDirectory() as tmp:  # a plain fp32 ONNX file, as the server export makes
        path = Path(tmp) / "model.onnx"
        _export_onnx(model, example, path)
        session = ort_session(path, threads)
    feed = {"input": example.numpy().astype(np.float32)}
    return _median_ms(lambda: session.run(None, feed))


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """`model` as a plain ONNX file at `path`, or a one-line error naming the model and the way around it."""
    import copy

    try:
        program = torch.onnx.export(copy.deepcopy(model), (example,), dynamo=True, input_names=["input"],
                                    output_names=["output"], verbose=False)
        program.save(str(path), external_data=False)
    except Exception as e:  # noqa: BLE001  (any exporter failure: the user's way out is the same)
        first = (re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines() or [type(e).__name__])[0]  # no colours
        raise KdtoolError(f"prune.max_latency_ms: the student ({type(model).__name__}) cannot be exported to ONNX "
                          f"to time it on onnxruntime: {type(e).__name__}: {first}",
                          "set `prune.latency_runtime: torch` to time it in PyTorch instead") from e


def _median_ms(run) -> float:
    """Median wall time (ms) of `run()` over `LATENCY_RUNS` calls after `LATENCY_WARMUP` untimed ones."""
    for _ in range(LATENCY_WARMUP):
        run()
    times = []
    for _ in range(LATENCY_RUNS):
        start = time.perf_counter()
        run()
        times.append(1000.0 * (time.perf_counter() - start))
    return statistics.median(times)
