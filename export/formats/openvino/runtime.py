"""OpenVINO on the CPU: `Core().compile_model(xml, "CPU", config)` with pinned threads and the latency hint.

The config is `INFERENCE_NUM_THREADS` (the other runtimes' intra-op threads), `PERFORMANCE_HINT:
LATENCY` (one stream, as a request-at-a-time server runs) and `INFERENCE_PRECISION_HINT: f32`:
without it the CPU plugin runs float layers in bf16 on CPUs with AMX or AVX-512 BF16, and an fp32
artifact would be timed and verified at another precision than its name says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compress.core.errors import ExportError
from export.extras import missing_extra
from export.runtime import RUNTIMES


def cpu_config(threads: int) -> dict[str, Any]:
    """The CPU plugin settings every OpenVINO artifact is loaded with (module docstring)."""
    return {"INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}


def compile_cpu(model: Any, threads: int) -> Any:
    """`model` (an `openvino.Model` or an `.xml` path) compiled for the CPU with `cpu_config`: in f32
    where it is float, as every artifact is run (a CPU with AMX would otherwise pick bf16)."""
    from export.formats.openvino.offline import import_openvino

    return import_openvino().Core().compile_model(model if not isinstance(model, Path) else str(model), "CPU",
                                                  cpu_config(threads))


class OpenVINOSession:
    """A compiled model and one infer request."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Run one batch and return the first output (float32, copied)."""
        out = self.request.infer([np.ascontiguousarray(inputs, dtype=np.float32)])
        return np.array(out[0], dtype=np.float32)


@RUNTIMES.register("openvino")
class OpenVINORuntime:
    """OpenVINO CPU plugin: IR `.xml` + `.bin` files."""

    name = "openvino"

    def available(self) -> str | None:
        """None when openvino is installed, else the install hint."""
        return missing_extra("openvino", ("openvino",), "OpenVINO")

    def load(self, path: Path, threads: int) -> OpenVINOSession:
        """Read and compile the IR for the CPU; a truncated `.xml` or `.bin` is an ExportError naming it."""
        path = Path(path)
        try:
            compiled = compile_cpu(path, threads)
        except Exception as e:  # RuntimeError with the plugin's check that failed
            raise ExportError(f"OpenVINO cannot load {path} (weights {path.with_suffix('.bin').name}): "
                              f"{last_line(e)}", "the .xml or .bin file is truncated or missing: re-export it") from e
        return OpenVINOSession(compiled)

    def versions(self) -> dict[str, str]:
        """openvino version."""
        from importlib.metadata import version

        return {"openvino": version("openvino")}


def last_line(e: BaseException, limit: int = 200) -> str:
    """The specific line of an OpenVINO error (its last non-empty one; the first names only the C++ file)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(e).__name__)[:limit]
