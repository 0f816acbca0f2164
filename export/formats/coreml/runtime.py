"""CoreML prediction (`coremltools.models.MLModel.predict`): macOS only."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from compress.core.errors import ExportError
from export.runtime import RUNTIMES


class CoreMLSession:
    """A loaded CoreML model; classifier outputs are returned as arrays in label order."""

    def __init__(self, model: object) -> None:
        spec = model.get_spec()
        self.model = model
        self.input_name = spec.description.input[0].name
        self.output_name = next(o.name for o in spec.description.output if o.name != "classLabel")

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Run one batch and return the first non-label output (float32)."""
        x = np.ascontiguousarray(inputs, dtype=np.float32)
        out = self.model.predict({self.input_name: x})[self.output_name]
        if isinstance(out, dict):  # classifier probabilities: {label: score}
            out = np.array([list(out.values())])
        return np.asarray(out, dtype=np.float32)


@RUNTIMES.register("coreml")
class CoreMLRuntime:
    """CoreML (coremltools MLModel.predict; needs macOS)."""

    name = "coreml"

    def available(self) -> str | None:
        """None on macOS with coremltools, else the reason."""
        if platform.system() != "Darwin":
            return "CoreML prediction needs macOS"
        try:
            import coremltools  # noqa: F401
        except ImportError:
            return "coremltools is not installed"
        return None

    def load(self, path: Path, threads: int) -> CoreMLSession:
        """Load and compile the package for all compute units (CoreML picks its own threads)."""
        reason = self.available()
        if reason:
            raise ExportError(f"cannot run {path}: {reason}", "benchmark CoreML artifacts on a Mac")
        import coremltools as ct

        try:
            return CoreMLSession(ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.ALL))
        except Exception as e:
            detail = str(e).splitlines()[0][:200]
            raise ExportError(f"CoreML cannot load {path}: {detail}", "re-export it") from e

    def versions(self) -> dict[str, str]:
        """coremltools version."""
        from importlib.metadata import version

        return {"coremltools": version("coremltools")}
