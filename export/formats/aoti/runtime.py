"""AOTInductor `.pt2` packages (`torch._inductor.aoti_load_package`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from compress.core.errors import ExportError
from export.formats.pytorch.runtime import first_output
from export.runtime import RUNTIMES


class AotiSession:
    """A loaded AOTInductor model."""

    def __init__(self, compiled: object, device: torch.device) -> None:
        self.compiled = compiled
        self.device = device

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Run one batch and return the first output."""
        with torch.inference_mode():
            out = self.compiled(torch.from_numpy(np.ascontiguousarray(inputs)).to(self.device))
        return first_output(out).float().cpu().numpy()


@RUNTIMES.register("aoti")
class AotiRuntime:
    """AOTInductor compiled packages (.pt2, CPU or CUDA as compiled)."""

    name = "aoti"

    def available(self) -> str | None:
        """Available wherever torch is (the package must match this machine's CPU ISA / GPU)."""
        return None

    def load(self, path: Path, threads: int) -> AotiSession:
        """Load a package (`torch.set_num_threads` sets the OpenMP pool, process-wide)."""
        torch.set_num_threads(threads)
        try:
            from torch._inductor import aoti_load_package

            compiled = aoti_load_package(str(path))
            device_key = compiled.get_metadata().get("AOTI_DEVICE_KEY", "cpu")
        except Exception as e:
            detail = str(e).splitlines()[0][:200]
            raise ExportError(f"{path} does not load as an AOTInductor package: {detail}",
                              "re-export it on this machine (packages are tied to the CPU ISA / GPU)") from e
        return AotiSession(compiled, torch.device("cuda" if device_key.startswith("cuda") else "cpu"))

    def versions(self) -> dict[str, str]:
        """torch version."""
        return {"torch": torch.__version__}
