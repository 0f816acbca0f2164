"""Import every runtime module so each registers itself in `RUNTIMES` (used by `get_runtime`)."""

from benchmark.runtimes import (  # noqa: F401
    aoti,
    coreml,
    executorch,
    onnxruntime,
    tensorrt,
    torch_eager,
    torchscript,
)
