"""Shared test setup: quiet progress, 2 threads, sleeping OpenMP threads, deterministic seeds."""

import os
from pathlib import Path

os.environ.setdefault("KDTOOL_QUIET", "1")
# Idle OpenMP threads sleep instead of spinning. The suite runs on two pytest-xdist workers, each
# training on 2 threads (and starting kdtool processes that do too) on a 2-core machine: spinning
# threads then burn the core the other worker needs. Measured on the idle 2-core machine: 537 s and
# 1,005 s of CPU with spinning threads, 279 s and 492 s without (one process: 378 s). Read by the
# OpenMP runtime when torch loads, so it is set before the import below; child processes inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield

# Pin kdtool's top-level packages (onnxruntime.transformers appends a folder holding a
# `benchmark.py` to sys.path; see kdtool.py).
import benchmark  # noqa: E402,F401
import export  # noqa: E402,F401


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: tiny models on a shared 2-core machine train fastest (and alike) this way."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


BEFORE_JAX = ("export/test_lowering.py",)
"""Files collected first: they fork a child, which kdtool does only before a LiteRT export has started JAX
in the process (`export.lowering`). In one process they then run before the LiteRT tests; with two
workers pytest-xdist may still hand them to a worker after a LiteRT file, and they skip with the reason."""


def pytest_collection_modifyitems(config, items):
    """`BEFORE_JAX` first; `@pytest.mark.gpu` tests skip with the reason where torch sees no CUDA device
    (CI never has one)."""
    tests = Path(__file__).parent
    first = {tests / name for name in BEFORE_JAX}
    items.sort(key=lambda item: Path(str(item.path)) not in first)  # stable: the rest keep their order
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA GPU: torch {torch.__version__} sees none here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def crash_reference(tmp_path_factory):
    """A tiny run made stage by stage without a kill, with a copy of its folder after each stage
    (`tests/compress/crash_harness.py`): shared by the crash, disk-full and integrity tests."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "compress"))
    from crash_harness import make_reference

    old = torch.get_num_threads()
    torch.set_num_threads(1)  # the kill tests' children train on one thread: resume is exact on one
    try:
        return make_reference(tmp_path_factory.mktemp("crash-reference"))
    finally:
        torch.set_num_threads(old)
