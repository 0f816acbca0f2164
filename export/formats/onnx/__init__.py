"""The onnx format: its exporter and its runtime, registered together."""

from export.formats.onnx import exporter, runtime  # noqa: F401
