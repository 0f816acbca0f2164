"""ExecuTorch's Python runtime (`executorch.runtime`): loads `.pte` programs with the kernels built in.

A program that loads ahead of time can still fail here when an operator kernel or a delegate
(e.g. CoreMLBackend off Apple platforms) is missing; that is an ExportError naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.core.errors import ExportError
from export.runtime import RUNTIMES


def set_threadpool(threads: int) -> None:
    """Size ExecuTorch's process-wide XNNPACK threadpool to `threads`, only when it has another size.

    `_unsafe_reset_threadpool` replaces the pool under every method loaded in the process: in the
    peers benchmark (several programs loaded at once) the programs loaded before a reset ran at half
    speed after it, and one run segfaulted (the cause not isolated), so a pool of the
    right size is left alone. A resize (export verifying with one thread fewer) still slows programs
    loaded before it: load a session after the export that resizes.
    """
    from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count, _unsafe_reset_threadpool

    if _threadpool_get_thread_count() != threads:
        _unsafe_reset_threadpool(threads)


class ExecuTorchSession:
    """A loaded `forward` method, with the program it came from kept alive beside it."""

    def __init__(self, method: object, program: object = None) -> None:
        self.method, self.program = method, program

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Run one batch and return the first output."""
        import torch

        out = self.method.execute([torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))])
        return out[0].float().numpy()


@RUNTIMES.register("executorch")
class ExecuTorchRuntime:
    """ExecuTorch Python runtime (portable + XNNPACK kernels as shipped in the pip wheel)."""

    name = "executorch"

    def available(self) -> str | None:
        """None when executorch.runtime imports."""
        try:
            import executorch.runtime  # noqa: F401
        except ImportError:
            return "executorch is not installed (pip install executorch)"
        return None

    def load(self, path: Path, threads: int) -> ExecuTorchSession:
        """Load the program and its `forward` method; sizes the (process-wide) XNNPACK threadpool."""
        from compress.core.native import quiet_native

        with quiet_native():  # cpuinfo and threadpool lines from C++ (shown with --debug)
            from executorch.runtime import Runtime

            set_threadpool(threads)
            runtime = Runtime.get()
        try:
            with quiet_native():
                program = runtime.load_program(Path(path))
                method = program.load_method("forward")
        except Exception as e:
            registered = list(runtime.backend_registry.registered_backend_names)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            missing = missing_backends(Path(path), registered)
            if missing:  # the known cause: the program was lowered to a delegate this runtime lacks
                raise ExportError(f"ExecuTorch cannot load {path}: Backend {missing[0]} is not registered ({first})",
                                  f"this runtime has {', '.join(registered) or 'no backends'}; run it where "
                                  f"{missing[0]} is built in") from e
            raise ExportError(f"ExecuTorch cannot load {path}: {first}",
                              f"the file is truncated, or it needs a kernel this runtime lacks "
                              f"(registered backends: {', '.join(registered)})") from e
        if method is None:
            raise ExportError(f"{path} has no 'forward' method", "re-export it with kdtool")
        return ExecuTorchSession(method, program)

    def versions(self) -> dict[str, str]:
        """executorch version."""
        from importlib.metadata import version

        return {"executorch": version("executorch")}


def backend_registered(name: str) -> bool:
    """Whether this ExecuTorch runtime has the delegate `name` (e.g. 'CoreMLBackend')."""
    from executorch.runtime import Runtime

    return Runtime.get().backend_registry.is_available(name)


KNOWN_BACKENDS = ("CoreMLBackend", "XnnpackBackend", "MPSBackend", "VulkanBackend", "QnnBackend", "VgfBackend")
"""ExecuTorch delegate ids; a program names the ones it was lowered to (as strings in its flatbuffer)."""


def missing_backends(path: Path, registered: list[str]) -> list[str]:
    """Delegates a `.pte` names that this runtime has not registered (read from the file's bytes)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return []
    return [b for b in KNOWN_BACKENDS if b not in registered and b.encode() in data]


def delegate_unavailable(info: dict) -> str | None:
    """Why a program lowered to a delegate (artifact `info["backend"]`) cannot run here, or None.

    ExecuTorch programs lowered to CoreML run only where that delegate is built in (Apple OSes): on
    Linux they are "not verified on this OS", as CoreML files are, not failures.
    """
    backend = info.get("backend")
    if backend == "CoreMLBackend" and not backend_registered(backend):
        return "the ExecuTorch CoreML delegate runs only on Apple OSes (iOS/macOS)"
    return None
