"""The onnx format: its exporter, its runtime and its int8 writer, registered together."""

from export.formats.onnx import exporter, int8, runtime  # noqa: F401
