"""PyTorch itself (eager): the reference runtime every artifact is checked against."""

from export.formats.pytorch import runtime  # noqa: F401
