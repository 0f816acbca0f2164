"""Shared test setup: quiet progress, 2 threads (1 per pytest-xdist worker), deterministic seeds."""

import os
from pathlib import Path

os.environ.setdefault("KDTOOL_QUIET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


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


LONG_FILES = ("e2e/test_pipeline.py", "compress/test_crash_consistency.py", "export/test_executorch.py",
              "compress/test_accuracy_aware.py", "compress/test_resume_signals.py", "compress/test_quantize.py",
              "compress/test_qat_features.py", "export/test_coreml.py", "export/test_native_chatter.py",
              "benchmark/test_sweep_runs.py", "benchmark/test_sweep_study.py")
"""The files whose tests take longest (`pytest --durations=0`), longest first: they are handed out
first, so neither pytest-xdist worker is left with a long file at the end while the other idles."""


def pytest_collection_modifyitems(config, items):
    """Long files first (`LONG_FILES`); `@pytest.mark.gpu` tests skip with the reason where torch sees
    no CUDA device (CI never has one)."""
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    tests = Path(__file__).parent

    def order(item) -> int:
        rel = Path(str(item.path)).relative_to(tests).as_posix() if tests in Path(item.path).parents else ""
        return rank.get(rel, len(rank))

    items.sort(key=order)  # stable: every other test keeps its place
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
