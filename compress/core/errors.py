"""The one error type users can fix, and the exit codes of docs/design.md."""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_NON_FINITE = 3
EXIT_EXPORT = 4
EXIT_GATE = 5


class KdtoolError(Exception):
    """A problem the user can fix: a one-line message naming the culprit, and a hint.

    Raised where the fact is known; only the CLI turns it into a line and an exit code.

    Args:
        message: what is wrong, naming the file, key or value at fault.
        hint: what would fix it.
        exit_code: one of the EXIT_* codes (2 bad input, 3 non-finite loss, 4 export/parity, 5 gate).
    """

    def __init__(self, message: str, hint: str = "", exit_code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def line(self) -> str:
        """The one line the CLI prints for this error (the Python API raises the same error)."""
        hint = f" (hint: {self.hint})" if self.hint else ""
        return " ".join(f"kdtool: error: {self.message}{hint}".split())


class NonFiniteLossError(KdtoolError):
    """Training met a NaN/Inf loss; the last good checkpoint is kept."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message, hint, EXIT_NON_FINITE)


class ExportError(KdtoolError):
    """An artifact could not be written, loaded, or failed its parity check."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message, hint, EXIT_EXPORT)


class GateError(KdtoolError):
    """A CI gate (`--min-retention`, `--max-regression`) was not met."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message, hint, EXIT_GATE)
