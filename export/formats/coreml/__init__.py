"""The coreml format: its exporter and its runtime, registered together."""

from export.formats.coreml import exporter, runtime  # noqa: F401
