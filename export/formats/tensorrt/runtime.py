"""TensorRT engines (TensorRT 10/11 API: named I/O tensors, `execute_async_v3`), CUDA only."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.core.errors import ExportError
from export.runtime import RUNTIMES


class TensorRTSession:
    """A deserialized engine and one execution context; I/O buffers are torch CUDA tensors."""

    def __init__(self, engine: object) -> None:
        import tensorrt as trt

        self.engine = engine
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.input_name = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        # the engine's own input type (fp32 for kdtool's exports, whose fp16 casts sit inside the graph)
        self.input_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.input_name)))

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Copy the batch to the GPU, run, and return the first output."""
        import tensorrt as trt
        import torch

        x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=self.input_dtype)).cuda()
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        outputs = []
        for name in self.output_names:
            dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))).dtype
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, out.data_ptr())
            outputs.append(out)
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ExportError("TensorRT execution failed", "see the TensorRT log")
        stream.synchronize()
        return outputs[0].float().cpu().numpy()


@RUNTIMES.register("tensorrt")
class TensorRTRuntime:
    """TensorRT (NVIDIA GPUs; engines are tied to the GPU and TensorRT version)."""

    name = "tensorrt"

    def available(self) -> str | None:
        """None with tensorrt importable and a CUDA device, else the reason."""
        from export.formats.tensorrt.exporter import unavailable_reason

        return unavailable_reason()

    def load(self, path: Path, threads: int) -> TensorRTSession:
        """Deserialize an engine built by `export.formats.tensorrt.exporter` (threads do not apply on the GPU)."""
        reason = self.available()
        if reason:
            raise ExportError(f"cannot run {path}: {reason}", "benchmark TensorRT engines on a CUDA machine")
        import tensorrt as trt

        engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(Path(path).read_bytes())
        if engine is None:
            raise ExportError(f"TensorRT cannot deserialize {path}",
                              "engines only load with the TensorRT version and GPU that built them: rebuild")
        return TensorRTSession(engine)

    def versions(self) -> dict[str, str]:
        """tensorrt version, when installed."""
        try:
            import tensorrt
        except ImportError:
            return {}
        return {"tensorrt": tensorrt.__version__}
