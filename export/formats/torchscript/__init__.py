"""The torchscript format: its exporter and its runtime, registered together."""

from export.formats.torchscript import exporter, runtime  # noqa: F401
