"""Keep native libraries' prints (ExecuTorch cpuinfo/threadpool lines, coremltools) off the terminal.

C and C++ code writes to file descriptors 1 and 2 directly, past `sys.stdout` and any Python
logging filter, so the only way to silence it is to point those descriptors elsewhere while the
native call runs. `--debug` (environment `KDTOOL_DEBUG=1`, set by the CLI) lets everything through.
Use it around loads and conversions, not around timed inference calls (dup2 costs microseconds).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile
from collections.abc import Iterator

DEBUG_ENV = "KDTOOL_DEBUG"


def debug() -> bool:
    """True when the user asked for everything (`kdtool ... --debug`)."""
    return os.environ.get(DEBUG_ENV, "") == "1"


def _flush_c_stdio() -> None:
    """Flush C's stdio buffers (a printf without a newline would otherwise surface later)."""
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def quiet_native(captured: list[str] | None = None) -> Iterator[None]:
    """Redirect fds 1 and 2 to a temporary file while inside; a no-op with `--debug`.

    Python output inside the block is redirected as well (it shares the descriptors), so keep the
    block to the native call itself.

    Args:
        captured: if given, what was written inside the block is appended to it (decoded text).
    """
    if debug():
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(ValueError, OSError):
            stream.flush()
    _flush_c_stdio()
    saved = (os.dup(1), os.dup(2))
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(ValueError, OSError):
                    stream.flush()
            _flush_c_stdio()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            if captured is not None:
                sink.seek(0)
                captured.append(sink.read().decode(errors="replace"))
