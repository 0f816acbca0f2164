"""The tensorrt format: its exporter and its runtime, registered together."""

from export.formats.tensorrt import exporter, runtime  # noqa: F401
