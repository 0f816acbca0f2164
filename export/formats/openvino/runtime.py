"""OpenVINO on the CPU: `Core().compile_model(xml, "CPU", config)` with pinned threads and the latency hint.

The config is `INFERENCE_NUM_THREADS` (the other runtimes' intra-op threads), `PERFORMANCE_HINT:
LATENCY` (one stream, as a request-at-a-time server runs), and for an fp32 artifact
`INFERENCE_PRECISION_HINT: f32`: without it the CPU plugin runs float layers in bf16 on CPUs with
AMX or AVX-512 BF16, and an fp32 artifact would be timed and verified at another precision than its
name says. An int8 artifact runs as the plugin runs it by default, as a deployed server would: its
int8 layers in int8 and the layers left float at the plugin's inference precision (bf16 on those
CPUs, f32 elsewhere); parity judges it so. The precision is read from the model's `rt_info`
(`kdtool.precision`, written by the exporter); a file without it runs in f32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compress.core.errors import ExportError
from export.extras import missing_extra
from export.runtime import RUNTIMES

RT_INFO_KEY = "kdtool"
"""The `rt_info` section the exporter writes kdtool's metadata under (`name`, `precision`, ...)."""
PRECISION_KEY = [RT_INFO_KEY, "kdtool.precision"]
"""Where that metadata names the artifact's precision."""


def cpu_config(threads: int, precision: str = "fp32") -> dict[str, Any]:
    """The CPU plugin settings an OpenVINO artifact of `precision` is loaded with (module docstring)."""
    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": "LATENCY"}
    if precision != "int8":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    return config


def artifact_precision(model: Any) -> str:
    """The precision an `openvino.Model` was exported at (its rt_info), fp32 when it says none."""
    return model.get_rt_info(PRECISION_KEY).astype(str) if model.has_rt_info(PRECISION_KEY) else "fp32"


def compile_cpu(model: Any, threads: int, precision: str | None = None) -> Any:
    """`model` (an `openvino.Model` or an `.xml` path) compiled for the CPU with `cpu_config` of
    `precision` (default: the one its rt_info names): fp32 in f32; int8 as the plugin runs it."""
    from export.formats.openvino.offline import import_openvino

    core = import_openvino().Core()
    if isinstance(model, (str, Path)):
        model = core.read_model(str(model))
    return core.compile_model(model, "CPU", cpu_config(threads, precision or artifact_precision(model)))


def float_precision(compiled: Any) -> str:
    """The precision the compiled model runs its float layers in (`f32`, `bf16`, `f16`)."""
    return compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()


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
