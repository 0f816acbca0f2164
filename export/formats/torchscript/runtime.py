"""TorchScript archives (`torch.jit.load`)."""

from __future__ import annotations

from pathlib import Path

import torch

from compress.core.errors import ExportError
from export.formats.pytorch.runtime import TorchSession
from export.runtime import RUNTIMES


@RUNTIMES.register("torchscript")
class TorchScriptRuntime:
    """TorchScript (`torch.jit.load`, CPU)."""

    name = "torchscript"

    def available(self) -> str | None:
        """Always available (part of torch)."""
        return None

    def load(self, path: Path, threads: int) -> TorchSession:
        """Load a `.pt` script on CPU (note: `torch.set_num_threads` is process-wide)."""
        torch.set_num_threads(threads)
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            raise ExportError(f"{path} does not load as TorchScript: {str(e).splitlines()[0][:200]}",
                              "the file is truncated or not a TorchScript archive: re-export it") from e
        return TorchSession(module)

    def versions(self) -> dict[str, str]:
        """torch version."""
        return {"torch": torch.__version__}
