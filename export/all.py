"""Import every exporter module so each registers itself in `EXPORTERS`."""

from export import aoti, coreml, executorch, onnx, tensorrt, torchscript  # noqa: F401
