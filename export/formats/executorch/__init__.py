"""The executorch format: its exporter and its runtime, registered together."""

from export.formats.executorch import exporter, runtime  # noqa: F401
