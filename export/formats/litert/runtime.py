"""LiteRT's interpreter (`ai_edge_litert.interpreter.Interpreter`) with its default XNNPACK delegate.

XNNPACK is applied by default (`OpResolverType.AUTO`) and sized by `num_threads`, as the other
runtimes' intra-op threads are. A fully integer file (int8 input and output tensors) is fed as an
app feeds it: the float input is quantized with the input tensor's scale and zero point, and the
int8 output dequantized with the output's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compress.core.errors import ExportError
from export.extras import missing_extra
from export.registry import first_line
from export.runtime import RUNTIMES


class LiteRTSession:
    """An interpreter with its tensors allocated for the file's (static) input shape."""

    def __init__(self, interpreter: Any, path: Path) -> None:
        self.interpreter, self.path = interpreter, path
        self.input = interpreter.get_input_details()[0]
        self.output = interpreter.get_output_details()[0]
        self.shape = tuple(int(d) for d in self.input["shape"])

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Run one batch of the file's batch size and return the first output (float32)."""
        x = np.ascontiguousarray(inputs, dtype=np.float32)
        if x.shape != self.shape:
            raise ExportError(f"{self.path.name} takes inputs of shape {self.shape}, got {x.shape}",
                              "LiteRT files have a static batch: run batches of that size")
        self.interpreter.set_tensor(self.input["index"], to_tensor(x, self.input))
        self.interpreter.invoke()
        return from_tensor(self.interpreter.get_tensor(self.output["index"]), self.output)


def to_tensor(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """`x` in the input tensor's type: quantized with its (scale, zero point) when it is integer."""
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return x.astype(dtype)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


def from_tensor(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """An output tensor as float32 (dequantized when it is integer)."""
    if np.dtype(detail["dtype"]).kind == "f":
        return np.asarray(y, dtype=np.float32).copy()
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


@RUNTIMES.register("litert")
class LiteRTRuntime:
    """LiteRT interpreter (XNNPACK delegate on the CPU): `.tflite` files."""

    name = "litert"

    def available(self) -> str | None:
        """None when ai-edge-litert is installed, else the install hint."""
        return missing_extra("litert", ("ai_edge_litert",), "LiteRT")

    def load(self, path: Path, threads: int) -> LiteRTSession:
        """Load the file with `threads` XNNPACK threads and allocate its tensors."""
        from compress.core.native import quiet_native

        path = Path(path)
        from ai_edge_litert.interpreter import Interpreter

        try:
            with quiet_native():  # "Created TensorFlow Lite XNNPACK delegate for CPU." (shown with --debug)
                interpreter = Interpreter(model_path=str(path), num_threads=threads)
        except Exception as e:  # ValueError for a bad flatbuffer
            raise ExportError(f"LiteRT cannot load {path}: {first_line(e)}",
                              "the file is truncated or not a .tflite model: re-export it") from e
        try:
            with quiet_native():
                interpreter.allocate_tensors()
        except Exception as e:  # RuntimeError: a node the converter wrote that no kernel can prepare
            raise ExportError(f"LiteRT cannot run {path.name}: {first_line(e)}",
                              "the converter wrote a graph its interpreter cannot prepare: use executorch or onnx "
                              "for this model") from e
        return LiteRTSession(interpreter, path)

    def versions(self) -> dict[str, str]:
        """ai-edge-litert version."""
        from importlib.metadata import version

        return {"ai-edge-litert": version("ai-edge-litert")}
