"""The aoti format: its exporter and its runtime, registered together."""

from export.formats.aoti import exporter, runtime  # noqa: F401
