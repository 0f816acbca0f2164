"""The LiteRT format (`.tflite`, formerly TensorFlow Lite): its exporter, int8 quantizer and runtime."""

from export.formats.litert import exporter, runtime  # noqa: F401
