"""The one way kdtool opens an ONNX Runtime CPU session: fixed threads, sequential execution, and a
load failure raised as a one-line `KdtoolError` (an `ExportError` unless the caller names another)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compress.core.errors import ExportError, KdtoolError

PROVIDERS = ["CPUExecutionProvider"]


def session_options(threads: int | None = None) -> Any:
    """SessionOptions with `threads` intra-op threads and one inter-op thread (no spinning threads
    stealing the other cores); None leaves ORT's thread defaults."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return so


def ort_session(path: Path, threads: int | None = None, *, options: Any = None,
                error: type[KdtoolError] = ExportError, message: str | None = None,
                hint: str = "the quantized graph uses an op ORT lacks here; try the other mode") -> Any:
    """An onnxruntime CPU session for `path`.

    Args:
        path: the .onnx (or .ort) file.
        threads: intra-op threads (None: ORT's default); ignored when `options` is given.
        options: prepared SessionOptions (profiling, saving an optimized model, ...).
        error, message, hint: what a load failure raises: `error(f"{message} ({first line})", hint)`;
            `message` defaults to "onnxruntime cannot load PATH".

    Raises:
        KdtoolError: (`error`) ORT cannot load the file.
    """
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), options or session_options(threads), providers=PROVIDERS)
    except Exception as e:  # onnxruntime raises its own exception types
        raise error(f"{message or f'onnxruntime cannot load {path}'} ({str(e).splitlines()[0][:200]})",
                    hint) from None
