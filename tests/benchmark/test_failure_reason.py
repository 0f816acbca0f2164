"""A failed report row keeps the whole first line of its error and the cause (`benchmark.stage.failure_reason`)."""

from __future__ import annotations


def test_a_failed_row_keeps_the_whole_first_line_and_the_cause():
    from benchmark.measure import failure_reason
    from compress.core.errors import ExportError

    long = ("ExecuTorch cannot load /a/very/long/path/" + "x" * 300
            + "/student_kd.fp16.pte: Backend CoreMLBackend is not registered")
    reason = failure_reason(ExportError(long, "run it where CoreMLBackend is built in"))
    assert reason.startswith(long) and reason.endswith("(run it where CoreMLBackend is built in)")
    try:
        try:
            raise OSError("Backend CoreMLBackend is not registered")
        except OSError as cause:
            raise RuntimeError("Failed to load method forward\nsecond line") from cause
    except RuntimeError as e:
        assert failure_reason(e) == ("RuntimeError: Failed to load method forward "
                                     "(cause: Backend CoreMLBackend is not registered)")
