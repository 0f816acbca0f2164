"""Reproducible training: the settings every training run pins, and the record of what made a result.

Training on CPU is not reproducible across machines by seeds alone: torch splits float sums (a
convolution's weight gradient over the batch) by intra-op thread, so the same recipe trained with
1 and 2 threads diverges within an epoch (`tests/compress/test_determinism.py` shows the weights
differ). So training pins the thread count to `train.threads` (default 2, whatever the machine's
core count), on CUDA asks for deterministic kernels (warning, not failing, where an op has none;
`--deterministic` makes that an error everywhere) and turns off cuDNN autotuning. With the same
versions on the same kind of CPU (same instruction set), a recipe then gives the same weights on
any machine, in any stage order.
"""

from __future__ import annotations

import os
import platform
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

DEFAULT_TRAINING_THREADS = 2
"""`train.threads` default: the reference machine's cores (numbers the README quotes were made with it)."""

RECORDED_PACKAGES = ("torch", "timm", "numpy", "scikit-learn", "safetensors")
"""Packages whose versions change trained weights, recorded with every training result."""


def configure(threads: int, strict: bool = False) -> dict[str, Any]:
    """Pin what training results depend on besides seeds; return the settings as recorded.

    Args:
        threads: torch intra-op threads while training (CPU float sums depend on it).
        strict: fail on an op without a deterministic kernel instead of warning.
    """
    commit()  # read (and cached) when training starts: later edits to the checkout do not change the record
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    # CPU kernels are deterministic at a fixed thread count; CUDA's atomics-based ones are not, so ask
    # for the deterministic ones there (warning where none exists; on CPU this would only add noise)
    if strict or (torch.cuda.is_available() and not torch.are_deterministic_algorithms_enabled()):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for deterministic GEMMs
        torch.use_deterministic_algorithms(True, warn_only=not strict)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    return settings()


def settings() -> dict[str, Any]:
    """The current determinism-relevant settings of this process."""
    return {"threads": torch.get_num_threads(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "device": "cuda" if torch.cuda.is_available() else "cpu"}


@cache
def commit() -> str:
    """The kdtool source's git commit (`+dirty` with uncommitted changes), else the package version."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        try:
            return f"kdtool {metadata.version('kdtool')} (not a git checkout)"
        except metadata.PackageNotFoundError:
            return "unknown"


def versions() -> dict[str, str]:
    """Python's and RECORDED_PACKAGES' versions ("not installed" where absent)."""
    out = {"python": platform.python_version(), "torch": torch.__version__}  # with its build (+cpu, +cu130)
    for name in RECORDED_PACKAGES[1:]:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def provenance() -> dict[str, Any]:
    """What a training result was made with: commit, versions, CPU and the determinism settings."""
    return {"commit": commit(), "versions": versions(), "cpu": platform.processor() or platform.machine(),
            "determinism": settings()}
