"""One package per format, each registering its exporter (`export.registry.EXPORTERS`) and its
runtime (`export.runtime.RUNTIMES`). Importing this package registers them all; a new format is one
new package here plus its name in this import."""

from export.formats import aoti, coreml, executorch, litert, onnx, openvino, pytorch, tensorrt, torchscript  # noqa: F401
from export.runtime import RUNTIMES, Runtime  # noqa: E402


def get_runtime(name: str) -> Runtime:
    """Instantiate the runtime registered as `name`."""
    return RUNTIMES.get(name)()
