"""ExecuTorch's Python runtime (`executorch.runtime`): loads `.pte` programs with the kernels built in.

A program that loads ahead of time can still fail here when an operator kernel or a delegate
(e.g. CoreMLBackend off Apple platforms) is missing; that is an ExportError naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.core.errors import ExportError
from export.runtime import RUNTIMES


class ExecuTorchSession:
    """A loaded `forward` method."""

    def __init__(self, method: object) -> None:
        self.method = method

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
        """Load the program and its `forward` method; sets the (process-wide) XNNPACK threadpool size."""
        from compress.core.native import quiet_native

        with quiet_native():  # cpuinfo and threadpool lines from C++ (shown with --debug)
            from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
            from executorch.runtime import Runtime

            _unsafe_reset_threadpool(threads)
            runtime = Runtime.get()
        try:
            with quiet_native():
                program = runtime.load_program(Path(path))
                method = program.load_method("forward")
        except Exception as e:
            backends = ", ".join(runtime.backend_registry.registered_backend_names)
            raise ExportError(f"ExecuTorch cannot load {path}: {str(e).splitlines()[0][:200]}",
                              f"the file is truncated, or it needs a kernel/delegate this runtime lacks "
                              f"(registered backends: {backends})") from e
        if method is None:
            raise ExportError(f"{path} has no 'forward' method", "re-export it with kdtool")
        return ExecuTorchSession(method)

    def versions(self) -> dict[str, str]:
        """executorch version."""
        from importlib.metadata import version

        return {"executorch": version("executorch")}


def backend_registered(name: str) -> bool:
    """Whether this ExecuTorch runtime has the delegate `name` (e.g. 'CoreMLBackend')."""
    from executorch.runtime import Runtime

    return Runtime.get().backend_registry.is_available(name)

