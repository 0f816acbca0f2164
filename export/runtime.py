"""The seam every backend implements: is it here, load an artifact, run a batch."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from compress.core.registry import Registry


class Session(Protocol):
    """A loaded artifact, ready to run."""

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Run one batch (float32 numpy, the model's input layout) and return the first output as numpy."""
        ...


class Runtime(Protocol):
    """A backend that runs artifacts of one format."""

    name: str

    def available(self) -> str | None:
        """None when usable here, else the reason it is not (e.g. 'CoreML prediction needs macOS')."""
        ...

    def load(self, path: Path, threads: int) -> Session:
        """Load an artifact with a fixed number of intra-op threads; raises ExportError if it cannot."""
        ...

    def versions(self) -> dict[str, str]:
        """Versions of the packages this runtime used."""
        ...


RUNTIMES: Registry = Registry("runtime")
