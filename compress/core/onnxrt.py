"""The one way kdtool opens an ONNX Runtime CPU session (fixed threads; a load failure is an ExportError)."""

from __future__ import annotations

from pathlib import Path

from compress.core.errors import ExportError


def ort_session(path: Path, threads: int | None = None):
    """An onnxruntime CPU session for `path`; a file ORT cannot load raises an ExportError."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise ExportError(f"onnxruntime cannot load {path} ({str(e).splitlines()[0][:200]})",
                          "the quantized graph uses an op ORT lacks here; try the other mode") from None
