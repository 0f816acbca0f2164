"""What an artifact costs apart from time: parameters, bytes on disk, FLOPs, peak memory.

- Parameters: `compress.models.build.count_params` on the PyTorch model the artifact came from.
- Size: MB (1e6 bytes) of *every* file of the artifact (ONNX external `.data`, folders such as
  `.mlpackage`), via `compress.core.atomic.size_on_disk_mb`.
- FLOPs: `torch.utils.flop_counter.FlopCounterMode` on the PyTorch model, reported as GFLOPs per
  sample at batch 1. It counts a multiply-add as 2 FLOPs (matmul/conv/attention ops only;
  element-wise ops are not counted), the convention of most model cards.
- Peak memory: see `peak_memory_mb`. `tracemalloc` would only see Python-heap allocations, not
  the native arenas of torch, ONNX Runtime or ExecuTorch, so we read the kernel's numbers.
"""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from compress.core.atomic import size_on_disk_mb
from compress.core.errors import KdtoolError


def artifact_files(path: str | os.PathLike, files: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """The main file plus its extra files (e.g. an `Artifact`'s `path` and `files`), without duplicates."""
    out: list[Path] = []
    for p in [Path(path), *map(Path, files)]:
        if p not in out:
            out.append(p)
    return out


def artifact_size_mb(files: Iterable[str | os.PathLike]) -> float:
    """Total size in MB (1e6 bytes) of all files (or folders) making up an artifact.

    Raises:
        KdtoolError: a listed file does not exist.
    """
    total = 0.0
    for f in files:
        if not Path(f).exists():
            raise KdtoolError(f"artifact file {f} not found", "re-run the export stage")
        total += size_on_disk_mb(f)
    return total


def count_params(module: Any) -> int:
    """Number of parameters of a PyTorch module (all, trainable or not)."""
    from compress.models.build import count_params as _count

    return _count(module)


def gflops_per_sample(module: Any, example: Any) -> float:
    """GFLOPs of one forward pass per sample, counted by `torch.utils.flop_counter.FlopCounterMode`.

    Args:
        module: the PyTorch model (eval mode is set for the count and restored).
        example: one input batch (torch tensor or numpy array); its leading axis is the batch,
            and the count is divided by it. Use batch 1 for the report.

    Returns:
        GFLOPs (1e9 FLOPs, a multiply-add counted as 2) per sample.
    """
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.from_numpy(example) if isinstance(example, np.ndarray) else example
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(x)
    finally:
        module.train(was_training)
    batch = int(x.shape[0]) if x.dim() > 0 else 1
    return counter.get_total_flops() / 1e9 / batch


def _status_kb(field: str) -> int | None:
    """A `VmXXX:` value in kB from /proc/self/status (Linux), or None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _ru_maxrss_mb() -> float:
    """Peak RSS since process start in MB (kB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6


def peak_memory_mb(fn: Callable[[], Any]) -> float:
    """Peak resident memory (MB) that running `fn` adds on top of what the process already holds.

    Method (Linux): reset the kernel's high-water mark (`echo 5 > /proc/self/clear_refs`), read the
    current resident set (`VmRSS`), call `fn`, read the new high-water mark (`VmHWM`); the result
    is HWM - RSS before. It sees native allocations (framework arenas, weights paged in, threads'
    stacks), not just the Python heap. Pass `lambda: session.run(x)` for inference only, or
    `lambda: runtime.load(path, threads).run(x)` for load + first inference.

    Caveats: it is a lower bound when the allocator reuses memory freed earlier in the same
    process (measure one artifact per fresh process for exact numbers); elsewhere (macOS, or
    Linux without a writable clear_refs) it falls back to the growth of `ru_maxrss`, which is 0
    when `fn` stays under an earlier peak.

    Returns:
        MB (1e6 bytes), never negative.
    """
    if _reset_peak_rss():
        before = _status_kb("VmRSS")
        fn()
        peak = _status_kb("VmHWM")
        if before is not None and peak is not None:
            return max(0.0, (peak - before) * 1024 / 1e6)
    before_mb = _ru_maxrss_mb()
    fn()
    return max(0.0, _ru_maxrss_mb() - before_mb)
