"""ONNX Runtime, CPU execution provider, fixed intra-op threads; node placement per provider."""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from compress.core.onnxrt import ort_session, session_options
from export.runtime import RUNTIMES


class OrtSession:
    """A loaded ONNX Runtime session."""

    def __init__(self, session: object) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Run one batch and return the first output (float32)."""
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(inputs, dtype=np.float32)})
        return np.asarray(out[0], dtype=np.float32)


@RUNTIMES.register("onnxruntime")
class OnnxRuntimeRuntime:
    """ONNX Runtime (CPU execution provider): .onnx and .ort files."""

    name = "onnxruntime"

    def available(self) -> str | None:
        """None when onnxruntime imports."""
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed (pip install onnxruntime)"
        return None

    def load(self, path: Path, threads: int) -> OrtSession:
        """Create a session with `threads` intra-op threads and one inter-op thread."""
        return OrtSession(ort_session(path, threads, message=f"ONNX Runtime cannot load {path}",
                                      hint="the file is truncated, or an op is unsupported by this ONNX Runtime"))

    def versions(self) -> dict[str, str]:
        """onnxruntime version."""
        import onnxruntime

        return {"onnxruntime": onnxruntime.__version__}


def node_placement(path: Path, example: np.ndarray, threads: int = 1) -> dict[str, dict[str, int]]:
    """Nodes per execution provider, and per op type, after ORT's graph optimisations.

    Read from one profiled run (ORT writes the provider of every executed node into the trace),
    which is how ORT exposes placement to Python.
    """
    so = session_options(threads)
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="kdtool-ort-"), "profile")
    session = ort_session(path, options=so)
    session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(example, dtype=np.float32)})
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink(missing_ok=True)
    placement: dict[str, Counter] = {}
    for ev in events:
        args = ev.get("args", {})
        if ev.get("cat") == "Node" and "provider" in args and ev.get("name", "").endswith("_kernel_time"):
            placement.setdefault(args["provider"], Counter())[args.get("op_name", "?")] += 1
    return {provider: dict(ops) for provider, ops in placement.items()}
