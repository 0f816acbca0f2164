"""Fault injection for the crash-consistency tests: SIGKILL this process at the Nth rename.

`KDTOOL_FAULT=before-rename:3` kills the process just before its 3rd atomic rename into place
(`compress.core.atomic.atomic_path`), `after-rename:3` just after it. Renames are counted in the
process that imported this module only (a forked helper, such as the ExecuTorch lowering child,
neither counts nor dies), so a given N lands at the same point of a deterministic run. Unset (the
normal case), `point` is one comparison with None. `KDTOOL_FAULT_TRACE=FILE` appends one line per
rename (`N<TAB>path`) to FILE, so a kill point can be named by the file it interrupts.
See docs/crash-consistency.md.
"""

from __future__ import annotations

import os
import signal

ENV = "KDTOOL_FAULT"
TRACE_ENV = "KDTOOL_FAULT_TRACE"
WHENS = ("before", "after")


def _parse(spec: str | None) -> tuple[str, int] | None:
    """`before-rename:3` → ("before", 3); unset or malformed → None (a typo must not kill a user's run)."""
    if not spec:
        return None
    point, _, count = spec.partition(":")
    when, _, what = point.partition("-")
    if when not in WHENS or what != "rename" or not count.isdigit() or int(count) < 1:
        return None
    return when, int(count)


_PLAN = _parse(os.environ.get(ENV))
_TRACE = os.environ.get(TRACE_ENV) or None
_PID = os.getpid()
_seen = 0


def point(when: str, path: os.PathLike | str) -> None:
    """Called by the atomic writer around each rename into place; kills the process at the planned one.

    Args:
        when: "before" (the temporary is complete, the final name not yet replaced) or "after".
        path: the name being replaced (for the trace).
    """
    if _PLAN is None and _TRACE is None:
        return
    _count(when, path)


def _count(when: str, path: os.PathLike | str) -> None:
    global _seen
    if os.getpid() != _PID:
        return
    if when == "before":
        _seen += 1
        if _TRACE is not None:
            with open(_TRACE, "a") as f:
                f.write(f"{_seen}\t{path}\n")
    if _PLAN == (when, _seen):
        os.kill(os.getpid(), signal.SIGKILL)
